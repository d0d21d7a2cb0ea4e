"""Property tests: folder names, normalization and grids over arbitrary inputs.

Hypothesis draws names with any characters (NUL, separators, dots, case
variants, very long ones) and arrays of any shape and dtype, NaN and
infinities included; each test states what must hold for every one of them.
"""

import io
import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from tf_cnnvis import write
from tf_cnnvis.render import (convert_into_grid, image_normalization, normalize_each, normalize_rows,
                              normalize_signed)
from tf_cnnvis.write import GridPng, PngStream, ShrunkPng, encode_png, inside, safe_names

SAFE_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])

# Names built from the pieces that make paths dangerous, plus arbitrary text.
PIECES = st.sampled_from(["..", ".", "/", "\\", "\x00", "a", "A", "_", "-", " ", "con", "é", "名",
                          "layer", "Layer", "~", ":", "*", "\udc80"])
NAMES = st.one_of(
    st.text(max_size=40),
    st.lists(PIECES, max_size=12).map("".join),
    st.text(alphabet="aA_/.", min_size=90, max_size=300),
)


@PROPERTY_SETTINGS
@given(names=st.lists(NAMES, max_size=12))
def test_safe_names_are_unique_safe_and_stay_inside(tmp_path, names):
    folders = safe_names(names)
    assert set(folders) == set(names)
    values = list(folders.values())
    assert len({value.lower() for value in values}) == len(values)
    for value in values:
        assert value and not value.startswith(".") and len(value) <= 160
        assert set(value) <= SAFE_CHARACTERS
        path = inside(str(tmp_path), value, "activations", "grid_activation.png")
        assert os.path.dirname(os.path.dirname(os.path.dirname(path))) == str(tmp_path)
    assert safe_names(list(reversed(names))) == folders  # the order of layers does not matter


@PROPERTY_SETTINGS
@given(names=st.lists(st.text(alphabet="abcAB_-.0", min_size=1, max_size=8), max_size=10))
def test_already_safe_distinct_names_keep_their_name(names):
    folders = safe_names(names)
    cleaned = [name.lstrip(".").lower() for name in set(names)]  # what each name would become
    for name, folder in folders.items():
        if not name.startswith(".") and cleaned.count(name.lower()) == 1 and name.lower() not in (
                "con", "nul", "aux", "prn"):
            assert folder == name


DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64,
                          np.uint8, np.uint16, np.bool_])


def arrays(min_dims=1, max_dims=4, max_side=6, dtype=DTYPES):
    def build(chosen):
        kind = np.dtype(chosen).kind
        if kind == "f":
            elements = st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(chosen).itemsize * 8)
        else:
            elements = None
        return hnp.arrays(chosen, hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side),
                          elements=elements)

    return dtype.flatmap(build)


@PROPERTY_SETTINGS
@given(image=arrays())
def test_image_normalization_spans_the_range_and_keeps_order(image):
    out = image_normalization(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    values = image.astype(np.float64)
    finite = np.isfinite(values)
    assert np.all(out[~finite] == 0)  # NaN and infinities are shown as the minimum
    if not finite.any():
        return
    low, high = values[finite].min(), values[finite].max()
    if high == low:
        assert np.all(out == 0)
        return
    assert np.all(out[finite & (values == low)] == 0)
    assert np.all(out[finite & (values == high)] == 255)
    order = np.argsort(values[finite], kind="stable")
    assert np.all(np.diff(out[finite][order].astype(int)) >= 0)  # monotone: order is kept


@PROPERTY_SETTINGS
@given(batch=arrays(min_dims=2, max_dims=4, dtype=st.sampled_from([np.float32, np.float64, np.int32])))
def test_normalize_each_equals_image_normalization_per_item(batch):
    out = normalize_each(batch)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    for item, normalized in zip(batch, out):
        np.testing.assert_array_equal(normalized, image_normalization(item))
        finite = np.isfinite(item.astype(np.float64))
        if finite.any() and item[finite].max() > item[finite].min():
            assert normalized[finite].min() == 0 and normalized[finite].max() == 255


@PROPERTY_SETTINGS
@given(batch=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, max_side=8),
                        elements=st.floats(-2.0**100, 2.0**100, width=32)))
def test_float32_scaling_is_within_one_level_of_float64(batch):
    """Finite float32 rows are scaled in float32: at most one grey level off the float64 result."""
    rows = batch.reshape(batch.shape[0], -1)
    fast = normalize_rows(rows, 255.0).astype(int)
    exact = normalize_rows(rows.astype(np.float64), 255.0).astype(int)  # float64 takes the exact path
    assert np.abs(fast - exact).max() <= 1


@PROPERTY_SETTINGS
@given(picture=hnp.arrays(np.uint8, st.one_of(
    hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
    st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3, 4])))))
def test_png_encoding_decodes_to_the_same_pixels(picture):
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(picture))))
    np.testing.assert_array_equal(decoded, picture.reshape(decoded.shape))


@PROPERTY_SETTINGS
@given(cells=hnp.arrays(np.uint8, st.tuples(st.integers(0, 30), st.integers(1, 6), st.integers(1, 6),
                                            st.sampled_from([1, 3]))),
       padding=st.integers(0, 3), splits=st.lists(st.integers(0, 30), max_size=4))
def test_grid_png_streamed_in_chunks_equals_the_whole_grid(cells, padding, splits):
    grid = GridPng(len(cells), cells.shape[1:], padding=padding)
    for chunk in np.split(cells, sorted(min(s, len(cells)) for s in splits)):
        grid.add(chunk)
    decoded = np.asarray(Image.open(io.BytesIO(grid.finish()[0])))
    expected = convert_into_grid(cells, padding=padding)
    np.testing.assert_array_equal(decoded, expected.reshape(decoded.shape))


@pytest.mark.parametrize("strategy", [zlib.Z_DEFAULT_STRATEGY, zlib.Z_RLE])
def test_png_streamed_to_a_file_in_many_chunks_decodes_to_the_same_pixels(tmp_path, monkeypatch, strategy):
    monkeypatch.setattr(write, "_IDAT_BYTES", 4096)
    picture = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    picture[100:180] = 128  # runs, for the run-length strategy
    with open(tmp_path / "picture.png", "wb") as file:
        stream = PngStream(*picture.shape, out=file, strategy=strategy)
        for rows in np.array_split(picture, 7):
            stream.write(rows)
        assert stream.finish() is None
    data = (tmp_path / "picture.png").read_bytes()
    assert data.count(b"IDAT") > 3
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), picture)


@PROPERTY_SETTINGS
@given(picture=hnp.arrays(np.uint8, st.tuples(st.integers(1, 23), st.integers(1, 23), st.sampled_from([1, 3]))),
       factor=st.integers(1, 6), splits=st.lists(st.integers(0, 23), max_size=4))
def test_shrunk_png_holds_each_blocks_mean_whatever_the_row_grouping(picture, factor, splits):
    shrunk = ShrunkPng(*picture.shape, factor)
    for rows in np.split(picture, sorted(min(s, len(picture)) for s in splits)):
        shrunk.write(rows)
    decoded = np.asarray(Image.open(io.BytesIO(shrunk.finish())))
    height, width = -(-picture.shape[0] // factor), -(-picture.shape[1] // factor)
    expected = np.empty((height, width, picture.shape[2]))
    for y in range(height):
        for x in range(width):
            block = picture[y * factor:(y + 1) * factor, x * factor:(x + 1) * factor]
            expected[y, x] = block.reshape(-1, picture.shape[2]).mean(axis=0)
    assert decoded.shape[:2] == shrunk.shape[:2] == (height, width)
    assert np.abs(decoded.reshape(expected.shape).astype(float) - expected).max() <= 0.5 + 1e-3


@PROPERTY_SETTINGS
@given(cells=arrays(min_dims=3, max_dims=4, max_side=5), padding=st.integers(0, 3))
def test_convert_into_grid_places_every_cell(cells, padding):
    grid = convert_into_grid(cells, padding=padding)
    stack = cells if cells.ndim == 4 else cells[..., None]
    n, height, width, channels = stack.shape
    columns = max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, int(np.ceil(n / columns)))
    assert grid.dtype == np.uint8
    assert grid.shape == (rows * height + padding * (rows - 1), columns * width + padding * (columns - 1),
                          channels)
    if stack.dtype == np.uint8:
        expected = stack
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            values = stack.astype(np.float64)
        expected = np.clip(np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0), 0, 255)
        expected = expected.astype(np.float32).astype(np.uint8)
    covered = np.zeros(grid.shape[:2], bool)
    for index in range(n):
        row, column = divmod(index, columns)
        y, x = row * (height + padding), column * (width + padding)
        np.testing.assert_array_equal(grid[y:y + height, x:x + width], expected[index])
        covered[y:y + height, x:x + width] = True
    assert np.all(grid[~covered] == 255)  # padding and empty cells are white


@pytest.mark.parametrize("low, high", [(-1e308, 1e308), (-np.finfo(np.float64).max, 0.0),
                                       (0.0, np.finfo(np.float32).tiny)])
def test_image_normalization_at_the_limits_of_floats(low, high):
    out = image_normalization(np.array([low, (low + high) / 2 if np.isfinite(low + high) else 0.0, high]))
    assert out[0] == 0 and out[-1] == 255 and 100 < out[1] < 155


@PROPERTY_SETTINGS
@given(batch=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12),
                                               st.sampled_from([1, 3])),
                        elements=st.floats(-1e6, 1e6, width=32)))
def test_signed_scaling_is_monotonic_and_keeps_zero_at_mid_grey(batch):
    out = normalize_signed(batch)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    for item, picture in zip(batch, out):
        order = np.argsort(item.ravel(), kind="stable")
        assert np.all(np.diff(picture.ravel()[order].astype(int)) >= 0)  # larger values, no darker grey
        assert np.all(picture[item == 0] == 128)
        assert np.all(picture[item > 0] >= 128) and np.all(picture[item < 0] <= 128)


def test_one_extreme_pixel_no_longer_flattens_the_rest():
    rng = np.random.default_rng(0)
    picture = rng.normal(0, 1, (1, 64, 64, 3)).astype(np.float32)
    picture[0, 5, 5, 0] = 1e4
    robust, minmax = normalize_signed(picture)[0], normalize_each(picture)[0]
    span = lambda grey: np.subtract(*np.percentile(grey, [99, 1]))  # noqa: E731
    assert span(robust) > 0.6 * 255 and span(minmax) < 0.05 * 255
    assert robust[5, 5, 0] == 255  # the extreme pixel saturates
