"""Results: what a top-activations scan found, per layer and per channel.

:class:`TopActivations` holds the kept images and one :class:`LayerTops`
per layer; :mod:`.storage` writes and reads them, :mod:`.pictures` draws
them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tf_cnnvis.errors import OptionError


@dataclasses.dataclass
class LayerTops:
    """The top-k images of each channel of one layer.

    Rows follow ``channels``; column ``r`` is the r-th strongest image.
    Missing entries (a dataset smaller than ``k``) have score ``-inf`` and
    image index ``-1``.

    Attributes:
        scores: ``(C, k)`` the strongest unit's value in each image.
        image_index: ``(C, k)`` position of the image in the dataset.
        units: ``(C, k, 2)`` ``(y, x)`` of that unit in the layer's map.
        boxes: ``(C, k, 4)`` its receptive field ``(y0, x0, y1, x1)`` in
            input pixels, not clipped to the image (None for dense layers).
        reconstructions: ``(C, k, fh, fw, c)`` the unit's reconstruction
            inside its box, or None when not computed.
        field_size / field_jump / field_start: the layer's receptive field.
    """

    name: str
    tensor: str
    channels: np.ndarray
    scores: np.ndarray
    image_index: np.ndarray
    units: np.ndarray
    boxes: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    field_size: tuple | None = None
    field_jump: tuple | None = None
    field_start: tuple | None = None


@dataclasses.dataclass
class TopActivations:
    """What :func:`top_activations` found and wrote. Always truthy.

    ``images`` holds every image that is in some channel's top-k, as shown
    (uint8), and ``image_index`` their positions in the dataset.
    """

    layers: dict = dataclasses.field(default_factory=dict)
    images: np.ndarray | None = None
    image_index: np.ndarray | None = None
    count: int = 0
    k: int = 9
    method: str = "deconvnet"
    replicas: int = 1
    paths: list = dataclasses.field(default_factory=list)
    h5_path: str | None = None

    def __bool__(self):
        return True

    def __getitem__(self, layer_name) -> LayerTops:
        return self.layers[layer_name]

    def image(self, dataset_index: int) -> np.ndarray:
        """The shown (uint8) version of the dataset's image ``dataset_index``."""
        slot = np.flatnonzero(self.image_index == dataset_index)
        if slot.size == 0:
            raise OptionError(f"image {dataset_index} is in no channel's top-k; kept images are "
                              f"{self.image_index.tolist()[:20]}...")
        return self.images[slot[0]]
