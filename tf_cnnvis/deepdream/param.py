"""How the optimized image is represented.

The optimizer works in a unit range: ``u`` in ``[-1, 1]`` maps linearly onto
the model's value range. Two parameterizations share one interface
(``image()`` and ``ascend(direction)``):

- :class:`PixelImage`: the pixels themselves (DeepDream proper); a step adds
  the normalized gradient and clips.
- :class:`FourierImage`: the color-decorrelated, frequency-scaled Fourier
  spectrum of Lucid / conveiro. Gradient ascent there is preconditioned
  toward natural-image statistics, so features appear without the
  high-frequency noise of pixel ascent. A sigmoid keeps the image bounded,
  and it is exactly invertible, so it can start from a user's image and
  carry an image across octaves.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Square root of the color covariance of ImageNet (Lucid), as a 3x3 mixing
# matrix normalized by its largest column norm.
_COLOR_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                            [0.27, 0.00, -0.05],
                            [0.27, -0.09, 0.03]], np.float32)
COLOR_MIXING = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))
SPECTRUM_STDDEV = 0.01
_SPATIAL_SCALE = 4.0  # Lucid divides the inverse FFT by 4 before the sigmoid
_BOUND = 1 - 1e-4     # keeps atanh finite when inverting a saturated image


class PixelImage:
    """Pixels in the unit range; steps are clipped back into it."""

    def __init__(self, images: np.ndarray):
        self.pixels = np.clip(np.asarray(images, np.float32), -1, 1)

    def image(self) -> np.ndarray:
        return self.pixels

    def set_image(self, images: np.ndarray):
        self.pixels = np.clip(np.asarray(images, np.float32), -1, 1)

    def ascend(self, direction: np.ndarray, step_size: float):
        self.pixels = np.clip(self.pixels + step_size * direction, -1, 1).astype(np.float32)


def frequency_scale(height: int, width: int) -> np.ndarray:
    """1 / max(|frequency|, 1 / max(H, W)), shape (H, W // 2 + 1): a 1/f spectrum."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fy * fy + fx * fx)
    return (1.0 / np.maximum(frequency, 1.0 / max(height, width))).astype(np.float32)


class FourierImage:
    """A batch of images held as scaled, color-decorrelated Fourier spectra.

    Works for any height and width, odd or even (the inverse FFT is given
    its output length explicitly). Color decorrelation applies to 3-channel
    images; other channel counts use the channels as they are. Steps use
    Adam, as Lucid does.
    """

    def __init__(self, shape, rng: np.random.Generator, images: np.ndarray | None = None,
                 learning_rate: float = 0.05):
        self.count, self.height, self.width, self.channels = (int(v) for v in shape)
        self.scale = frequency_scale(self.height, self.width) * np.sqrt(self.height * self.width)
        self.mixing = COLOR_MIXING if self.channels == 3 else np.eye(self.channels, dtype=np.float32)
        self.learning_rate = learning_rate
        spectrum_shape = (self.count, self.channels, self.height, self.width // 2 + 1, 2)
        if images is None:
            self.spectrum = (rng.standard_normal(spectrum_shape) * SPECTRUM_STDDEV).astype(np.float32)
        else:
            self.set_image(images)
        self._moment = np.zeros_like(self.spectrum)
        self._second_moment = np.zeros_like(self.spectrum)
        self._steps = 0

    def _image_tensor(self, spectrum):
        complex_spectrum = tf.complex(spectrum[..., 0], spectrum[..., 1]) * tf.cast(self.scale, tf.complex64)
        spatial = tf.signal.irfft2d(complex_spectrum, fft_length=[self.height, self.width])
        spatial = tf.transpose(spatial, [0, 2, 3, 1]) / _SPATIAL_SCALE
        mixed = tf.einsum("nhwc,dc->nhwd", spatial, self.mixing)
        return tf.tanh(mixed / 2)  # == 2 * sigmoid(mixed) - 1

    def image(self) -> np.ndarray:
        return self._image_tensor(tf.constant(self.spectrum)).numpy()

    def set_image(self, images: np.ndarray):
        """Find the spectrum whose image is ``images`` (clipped just inside the unit range)."""
        mixed = 2 * np.arctanh(np.clip(images, -_BOUND, _BOUND))
        spatial = mixed @ np.linalg.inv(self.mixing).T * _SPATIAL_SCALE
        spectrum = np.fft.rfft2(np.transpose(spatial, (0, 3, 1, 2)), s=(self.height, self.width))
        spectrum = spectrum / self.scale
        self.spectrum = np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)

    def ascend(self, direction: np.ndarray, step_size: float | None = None,
               beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8):
        """One Adam step up ``direction`` (a gradient with respect to the image)."""
        spectrum = tf.constant(self.spectrum)
        with tf.GradientTape() as tape:
            tape.watch(spectrum)
            images = self._image_tensor(spectrum)
        gradient = tape.gradient(images, spectrum, output_gradients=tf.constant(direction)).numpy()
        self._steps += 1
        self._moment = beta1 * self._moment + (1 - beta1) * gradient
        self._second_moment = beta2 * self._second_moment + (1 - beta2) * gradient * gradient
        corrected = self._moment / (1 - beta1 ** self._steps)
        corrected_second = self._second_moment / (1 - beta2 ** self._steps)
        self.spectrum = (self.spectrum + self.learning_rate * corrected
                         / (np.sqrt(corrected_second) + epsilon)).astype(np.float32)
