"""How close two float32 results must be, and why.

float32 keeps 24 significant bits: a relative step of eps = 2**-23, about
1.2e-7. The same sum computed in another order (another batch or crop size,
another number of threads, oneDNN's kernels or Eigen's, a Keras model or
its frozen graph) rounds differently at every addition. After n additions
the two results differ by up to about n * eps * sum|terms|, and by about
sqrt(n) * eps * sum|terms| in practice. Our test nets sum at most a few
thousand products per output (3 x 3 x 512 = 4608 in VGG16's deepest
convolutions) through a handful of layers, so a few hundred eps of the
result's own scale bounds them with room to spare.

An element near zero that results from cancellation keeps an absolute
error of the scale of the terms, not of itself: the absolute part of the
bound is therefore taken from the largest magnitude in the expected
array, never from each element alone. Measured: a smaller chunk of
reconstructions on an AVX-512 CPU moved 51 of 5376 elements by at most
7.2e-7 (6.4e-4 of those elements, 2e-6 of the array's largest value).

Comparisons that hold bit for bit (integer data, PNG round trips, the same
op on the same inputs) use ``np.testing.assert_array_equal`` instead, and
hand computations with a few terms use a tolerance of a few eps, stated
where they are made.
"""

import numpy as np

EPS = float(np.finfo(np.float32).eps)
# Relative bound per element and absolute bound as a fraction of the
# largest magnitude: 840 eps and 84 eps (see above).
REORDERED_RTOL = 1e-4
REORDERED_SCALE = 1e-5


def assert_reordered_close(actual, expected, rtol=REORDERED_RTOL, scale=REORDERED_SCALE, err_msg=""):
    """``actual`` equals ``expected`` up to float32 rounding in another summation order.

    Each element may differ by ``rtol * |expected| + scale * max|expected|``.
    """
    expected = np.asarray(expected)
    largest = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=scale * largest + np.finfo(np.float32).tiny,
                               err_msg=err_msg)
