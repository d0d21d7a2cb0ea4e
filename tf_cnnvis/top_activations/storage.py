"""Storage: a top-activations result in one HDF5 file, written atomically and read back.

:func:`tf_cnnvis.top_activations.render_top_activations` redraws every
picture from the file without recomputing anything.
"""

from __future__ import annotations

import os

import numpy as np

from tf_cnnvis.errors import OptionError
from tf_cnnvis.top_activations.results import LayerTops, TopActivations
from tf_cnnvis.write import safe_names

H5_NAME = "top_activations.h5"


def save_top_activations(result: TopActivations, path: str) -> str:
    """Write ``result`` to an HDF5 file (atomically) that :func:`load_top_activations` reads."""
    import h5py

    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with h5py.File(temporary, "w") as store:
        store.attrs.update(count=result.count, k=result.k, method=result.method, replicas=result.replicas)
        store.create_dataset("images", data=result.images)
        store.create_dataset("image_index", data=result.image_index)
        folders = safe_names(list(result.layers))
        for name, tops in result.layers.items():
            group = store.create_group(f"layers/{folders[name]}")
            group.attrs.update(name=name, tensor=tops.tensor)
            for field in ("field_size", "field_jump", "field_start"):
                if getattr(tops, field) is not None:
                    group.attrs[field] = np.array(getattr(tops, field))
            for key in ("channels", "scores", "image_index", "units", "boxes", "reconstructions"):
                value = getattr(tops, key)
                if value is not None:
                    group.create_dataset(key, data=value, chunks=True if value.ndim > 3 else None)
    os.replace(temporary, path)
    return path


def load_top_activations(path: str) -> TopActivations:
    """Read a result saved by :func:`save_top_activations`."""
    import h5py

    if not os.path.isfile(path):
        raise OptionError(f"{path!r} is not a file; give the {H5_NAME} written by top_activations")
    with h5py.File(path, "r") as store:
        result = TopActivations(images=store["images"][()], image_index=store["image_index"][()],
                                count=int(store.attrs["count"]), k=int(store.attrs["k"]),
                                method=str(store.attrs["method"]), replicas=int(store.attrs["replicas"]),
                                h5_path=path)
        for group in store["layers"].values():
            arrays = {key: group[key][()] for key in group}
            fields = {field: tuple(int(v) for v in group.attrs[field]) if field in group.attrs else None
                      for field in ("field_size", "field_jump", "field_start")}
            result.layers[str(group.attrs["name"])] = LayerTops(
                name=str(group.attrs["name"]), tensor=str(group.attrs["tensor"]), **arrays, **fields)
    return result

