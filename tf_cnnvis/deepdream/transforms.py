"""Random transforms applied to the image before each gradient.

A feature that survives small shifts, scalings and rotations is a feature of
the network, not of one pixel grid; optimizing through random transforms
removes the high-frequency "adversarial" patterns (Lucid's
``transform.py``). Every transform is a pure function
``(images, rng) -> images`` on a TensorFlow tensor in the unit range, so the
gradient flows back through it; :func:`compose` chains them.

The roll jitter of DeepDream proper is separate (:class:`Roll`): it is its
own exact inverse, so it needs no gradient tape at all.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tf_cnnvis.errors import OptionError

# Robustness transforms of conveiro/Lucid, in pixels and degrees.
PAD = 16
JITTER = (16, 8)
SCALES = tuple(1 + (i - 5) / 100 for i in range(11))  # 0.95 .. 1.05
ANGLES = tuple(range(-5, 6))


class Roll:
    """Random circular shift of up to ``max_shift`` pixels, undone on the gradient."""

    def __init__(self, max_shift: int, rng: np.random.Generator):
        if max_shift < 0:
            raise OptionError(f"jitter={max_shift!r} must be >= 0 pixels")
        self.max_shift = int(max_shift)
        self.rng = rng
        self.shift = (0, 0)

    def apply(self, images: np.ndarray) -> np.ndarray:
        if self.max_shift == 0:
            return images
        self.shift = tuple(int(s) for s in self.rng.integers(-self.max_shift, self.max_shift + 1, 2))
        return np.roll(images, self.shift, axis=(1, 2))

    def undo(self, gradient: np.ndarray) -> np.ndarray:
        if self.max_shift == 0:
            return gradient
        return np.roll(gradient, (-self.shift[0], -self.shift[1]), axis=(1, 2))


def pad(width: int, value: float = 0.0):
    """Pad with a constant (0 is the middle of the value range: plain gray)."""
    def transform(images, rng):
        return tf.pad(images, [[0, 0], [width, width], [width, width], [0, 0]], constant_values=value)
    return transform


def jitter(distance: int):
    """Crop ``distance`` pixels less, at a random offset: a random translation."""
    def transform(images, rng):
        height, width = images.shape[1], images.shape[2]
        if distance <= 0 or height <= distance or width <= distance:
            return images
        dy, dx = (int(v) for v in rng.integers(0, distance + 1, 2))
        return images[:, dy:dy + height - distance, dx:dx + width - distance]
    return transform


def _affine(images, scale: float, angle_degrees: float):
    """Scale and rotate about the center in one bilinear resampling (same size out).

    Built from gathers, so its gradient is the exact adjoint of the
    resampling (TensorFlow's own projective-transform gradient is only an
    approximation). Samples outside the image take the nearest edge pixel.
    """
    height, width = images.shape[1], images.shape[2]
    angle = math.radians(angle_degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    cy, cx = (height - 1) / 2, (width - 1) / 2
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64) - cy,
                         np.arange(width, dtype=np.float64) - cx, indexing="ij")
    source_y = np.clip(cy + sin * xx + cos * yy, 0, height - 1)
    source_x = np.clip(cx + cos * xx - sin * yy, 0, width - 1)
    top = np.minimum(np.floor(source_y).astype(np.int64), height - 2 if height > 1 else 0)
    left = np.minimum(np.floor(source_x).astype(np.int64), width - 2 if width > 1 else 0)
    fy = (source_y - top).astype(np.float32)[None, ..., None]
    fx = (source_x - left).astype(np.float32)[None, ..., None]
    bottom, right = np.minimum(top + 1, height - 1), np.minimum(left + 1, width - 1)

    def at(rows, columns):
        flat = tf.reshape(images, [-1, height * width, images.shape[3]])
        gathered = tf.gather(flat, (rows * width + columns).ravel(), axis=1)
        return tf.reshape(gathered, [-1, height, width, images.shape[3]])

    upper = at(top, left) * (1 - fx) + at(top, right) * fx
    lower = at(bottom, left) * (1 - fx) + at(bottom, right) * fx
    return upper * (1 - fy) + lower * fy


def random_scale(scales=SCALES):
    def transform(images, rng):
        return _affine(images, float(rng.choice(scales)), 0.0)
    return transform


def random_rotate(angles=ANGLES):
    def transform(images, rng):
        return _affine(images, 1.0, float(rng.choice(angles)))
    return transform


def center_crop(height: int, width: int):
    """Cut the middle ``height x width``: the network sees the parameter's size again."""
    def transform(images, rng):
        top = (images.shape[1] - height) // 2
        left = (images.shape[2] - width) // 2
        return images[:, top:top + height, left:left + width]
    return transform


def compose(transforms):
    def transform(images, rng):
        for step in transforms:
            images = step(images, rng)
        return images
    return transform


def standard_transforms():
    """pad 16, jitter 16, scale 0.95..1.05, rotate +-5 degrees, jitter 8."""
    return [pad(PAD), jitter(JITTER[0]), random_scale(), random_rotate(), jitter(JITTER[1])]


class TapeTransform:
    """Differentiable transforms on the unit image, pulled back with a gradient tape.

    The result is cut back to the image's own size, so a fixed-size
    network still sees its input size.
    """

    def __init__(self, transforms, rng: np.random.Generator):
        self.transforms = list(transforms)
        self.rng = rng
        self._tape = None
        self._source = None
        self._output = None

    def apply(self, images: np.ndarray) -> np.ndarray:
        source = tf.constant(images)
        height, width = images.shape[1:3]
        chain = compose(self.transforms + [center_crop(height, width)])
        with tf.GradientTape() as tape:
            tape.watch(source)
            output = chain(source, self.rng)
        if tuple(output.shape[1:3]) != (height, width):
            raise OptionError(f"the transforms shrink a {height}x{width} image to "
                              f"{output.shape[1]}x{output.shape[2]}; pad it first")
        self._tape, self._source, self._output = tape, source, output
        return output.numpy()

    def undo(self, gradient: np.ndarray) -> np.ndarray:
        pulled = self._tape.gradient(self._output, self._source, output_gradients=tf.constant(gradient))
        self._tape = self._source = self._output = None
        return pulled.numpy()
