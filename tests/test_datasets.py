"""Data sets: each format loads, preprocessing is exact arithmetic, a data set that cannot fit is refused."""

from __future__ import annotations

import numpy as np
import pytest

from harness.datasets import (
    Dataset,
    DatasetError,
    InputSpec,
    fit_to_model,
    load_dataset,
    parse_mapping,
    quantize,
    read_pnm,
    resize,
    to_channels,
)

GRAY8 = InputSpec((1, 8, 8, 1), 1 / 255, -128)  # a 0..1 image input, like vww's
DIGITS = InputSpec((1, 8, 8, 1), 16 / 255, -128)  # 0..16 pixels


def _write_pgm_p5(path, img: np.ndarray, maxval: int = 255) -> None:
    h, w = img.shape
    dtype = ">u2" if maxval > 255 else np.uint8
    path.write_bytes(f"P5\n# made by a test\n{w} {h}\n{maxval}\n".encode() + img.astype(dtype).tobytes())


def test_quantize_rounds_half_away_from_zero_and_clamps():
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.49, 300.0, -300.0], dtype=np.float32)
    assert quantize(x, 1.0, 0).tolist() == [1, -1, 2, -2, 2, 127, -128]
    assert quantize(np.array([0.0, 1.0]), 1 / 255, -128).tolist() == [-128, 127]


def test_digits_is_the_held_out_split():
    ds = load_dataset("digits")
    assert len(ds) == len(ds.labels) and 400 <= len(ds) <= 500
    assert ds.samples[0].shape == (8, 8)
    assert set(np.unique(ds.labels)) == set(range(10))
    assert min(float(s.min()) for s in ds.samples) >= 0 and max(float(s.max()) for s in ds.samples) <= 16
    # The default mapping reads pixels as the model's real values: 16 -> 127, 0 -> -128 for a 0..16 input.
    fd = fit_to_model(ds, DIGITS, 10)
    s0 = ds.samples[0].reshape(8, 8, 1)
    assert np.array_equal(fd.x[0, 0], quantize(s0, 16 / 255, -128))
    assert fd.x.shape == (len(ds), 1, 8, 8, 1) and fd.x.dtype == np.int8
    assert fit_to_model(ds, DIGITS, 10).digest == fd.digest  # deterministic: resume keys rely on it


def test_npz_uint8_images(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.source == "npz" and ds.classes == ["a", "b", "c"] and ds.value_range == (0.0, 255.0)
    fd = fit_to_model(ds, GRAY8, 3)
    # auto: 0..255 stretched over the input's 0..1, scale 1/255, zero point -128: q = pixel - 128 exactly
    assert np.array_equal(fd.x[:, 0, :, :, 0].astype(int), x.astype(int) - 128)
    assert fd.labels.tolist() == y.tolist()
    # limit keeps the first samples only
    assert len(fit_to_model(ds, GRAY8, 3, limit=2).x) == 2


def test_npz_flat_vectors_and_explicit_range(tmp_path):
    x = np.linspace(-1, 1, 4 * 10, dtype=np.float32).reshape(4, 10)
    np.savez(tmp_path / "v.npz", x=x, y=np.array([0, 1, 0, 1]), value_range=np.array([-1.0, 1.0]))
    spec = InputSpec((1, 10), 2 / 255, 0)
    fd = fit_to_model(load_dataset(tmp_path / "v.npz"), spec, 2, mapping="raw")
    assert np.array_equal(fd.x[:, 0], quantize(x, 2 / 255, 0))
    fd2 = fit_to_model(load_dataset(tmp_path / "v.npz"), spec, 2, mapping=(0.0, 2.0))
    assert np.array_equal(fd2.x[:, 0], quantize(x + 1.0, 2 / 255, 0))


def test_folder_of_png_jpeg_pgm(tmp_path):
    from PIL import Image

    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "notes.txt").write_text("not a class")
    # uniform images: whatever the resize, the pixel value is known exactly
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(tmp_path / "cat" / "white.png")
    Image.fromarray(np.full((12, 20, 3), (255, 0, 0), np.uint8)).save(tmp_path / "cat" / "red.jpg", quality=100)
    _write_pgm_p5(tmp_path / "dog" / "black.pgm", np.zeros((8, 8)))
    (tmp_path / "dog" / "gray.pgm").write_text("P2\n# ascii\n4 4\n15\n" + " ".join(["15"] * 16) + "\n")
    ds = load_dataset(tmp_path)
    assert ds.source == "folder" and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1]  # sorted files: red.jpg, white.png
    with pytest.raises(DatasetError, match=r"12x20x3 image; the model takes 8x8x1: .*--resize"):
        fit_to_model(ds, GRAY8, 2)  # another size is resized only when asked
    fd = fit_to_model(ds, GRAY8, 2, resize_method="bilinear")
    assert fd.x.shape == (4, 1, 8, 8, 1)
    red, white, black, gray = (fd.x[i, 0, :, :, 0] for i in range(4))
    assert np.all(white == 127) and np.all(black == -128) and np.all(gray == 127)
    # red -> BT.601 luma 0.299 * 255 (JPEG moves it by a level or two)
    assert np.all(np.abs(red.astype(int) - (round(0.299 * 255) - 128)) <= 3)
    assert "resized" in fd.mapping
    assert any("resized" in n for n in fd.notes) and any("grey" in n for n in fd.notes)


def test_data_is_not_changed_unasked(tmp_path):
    """A shape that is not the input's is refused; int8 data goes as it is; float data is quantized with the
    input's scale and zero point, not stretched; clamped values are said."""
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "rgb.npz", x=rng.random((3, 32, 32, 3), dtype=np.float32), y=[0, 1, 0])
    kws = InputSpec((1, 49, 10, 1), 0.5, 10)
    with pytest.raises(DatasetError, match=r"32x32x3 image; the model takes 49x10x1"):
        fit_to_model(load_dataset(tmp_path / "rgb.npz"), kws, 2)
    q = rng.integers(-128, 128, size=(3, 8, 8, 1), dtype=np.int8)
    np.savez(tmp_path / "q.npz", x=q, y=[0, 1, 1])
    fd = fit_to_model(load_dataset(tmp_path / "q.npz"), GRAY8, 2)
    assert np.array_equal(fd.x[:, 0], q) and "sent as they are" in fd.mapping  # -128 stays -128
    feats = np.linspace(-3, 3, 3 * 64, dtype=np.float32).reshape(3, 8, 8, 1)
    np.savez(tmp_path / "f.npz", x=feats, y=[0, 1, 1])
    spec = InputSpec((1, 8, 8, 1), 0.05, 3)  # represents -6.55..6.2: nothing clamps
    fd = fit_to_model(load_dataset(tmp_path / "f.npz"), spec, 2)
    assert np.array_equal(fd.x[:, 0], quantize(feats, 0.05, 3)) and "real input" in fd.mapping
    assert not any("clamped" in n for n in fd.notes)
    narrow = fit_to_model(load_dataset(tmp_path / "f.npz"), InputSpec((1, 8, 8, 1), 0.01, 0), 2)
    (note,) = [n for n in narrow.notes if "clamped" in n]
    outside = int(np.count_nonzero((feats < -1.285) | (feats > 1.275)))  # beyond -128..127 steps, by half one
    assert 0 < outside < feats.size and note.startswith(f"{outside} of 192 values")


def test_string_labels_become_class_indices(tmp_path):
    x = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "named.npz", x=x, y=np.array(["dog", "cat", "dog", "bird"]))
    ds = load_dataset(tmp_path / "named.npz")
    assert ds.classes == ["bird", "cat", "dog"] and ds.labels.tolist() == [2, 1, 2, 0]
    assert "sorted order (bird=0, cat=1, dog=2)" in ds.notes[0]
    np.savez(tmp_path / "ordered.npz", x=x, y=np.array(["dog", "cat", "dog", "bird"]), classes=["dog", "cat", "bird"])
    ds = load_dataset(tmp_path / "ordered.npz")
    assert ds.classes == ["dog", "cat", "bird"] and ds.labels.tolist() == [0, 1, 0, 2]
    np.savez(tmp_path / "stray.npz", x=x, y=np.array(["dog", "cow", "dog", "cat"]), classes=["dog", "cat"])
    with pytest.raises(DatasetError, match="'cow' are not in the file's 'classes'"):
        load_dataset(tmp_path / "stray.npz")


def test_folder_numeric_class_names_are_indices(tmp_path):
    for c in ("0", "2"):
        (tmp_path / c).mkdir()
        _write_pgm_p5(tmp_path / c / "a.pgm", np.full((8, 8), 10))
    ds = load_dataset(tmp_path)
    assert ds.labels.tolist() == [0, 2] and ds.classes == ["0", "1", "2"]


def test_read_pnm_variants(tmp_path):
    img = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    _write_pgm_p5(tmp_path / "deep.pgm", img, maxval=65535)
    got = read_pnm(tmp_path / "deep.pgm")
    assert got.shape == (3, 4) and np.allclose(got, img.astype(np.float64) * 255 / 65535, atol=1e-3)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    (tmp_path / "c.ppm").write_bytes(b"P6 3 2 255\n" + rgb.tobytes())
    assert np.array_equal(read_pnm(tmp_path / "c.ppm"), rgb.astype(np.float32))
    (tmp_path / "bad.pgm").write_bytes(b"P5\n4 4\n255\n" + bytes(5))
    with pytest.raises(DatasetError, match="expected 16 pixel values"):
        read_pnm(tmp_path / "bad.pgm")
    (tmp_path / "nope.pgm").write_bytes(b"GIF89a")
    with pytest.raises(DatasetError, match="not a PGM"):
        read_pnm(tmp_path / "nope.pgm")


def test_resize_and_channels():
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))
    half = resize(ramp, 4, 4, "bilinear")  # half-pixel centres: 0.5, 2.5, 4.5, 6.5
    assert np.allclose(half[0], [0.5, 2.5, 4.5, 6.5])
    near = resize(ramp, 4, 4, "nearest")
    assert set(near[0].tolist()) <= set(range(8)) and near.shape == (4, 4)
    up = resize(np.array([[0.0, 4.0]], dtype=np.float32), 1, 4, "bilinear")
    assert np.allclose(up[0], [0.0, 1.0, 3.0, 4.0])
    assert np.allclose(resize(np.full((5, 7, 3), 9.0), 3, 3), 9.0)
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 0] = 100
    assert np.allclose(to_channels(rgb, 1), 29.9)
    assert to_channels(rgb, 3, "bgr")[0, 0].tolist() == [0, 0, 100]
    assert to_channels(np.ones((2, 2)), 3).shape == (2, 2, 3)


def test_parse_mapping():
    assert parse_mapping(None) is None and parse_mapping("raw") == "raw"
    assert parse_mapping("-1:1") == (-1.0, 1.0)
    with pytest.raises(DatasetError):
        parse_mapping("1:0")
    with pytest.raises(DatasetError):
        parse_mapping("zero to one")


def _ds(samples, labels, classes=None) -> Dataset:
    labels = np.asarray(labels)
    return Dataset("t", "npz", list(samples), labels, classes or [str(i) for i in range(labels.max() + 1)], (0, 255))


def test_mismatched_datasets_are_refused_before_running(tmp_path):
    digits = load_dataset("digits")
    with pytest.raises(DatasetError, match=r"10 classes .* only 2 outputs"):
        fit_to_model(digits, GRAY8, 2)
    with pytest.raises(DatasetError, match=r"takes 640 values"):
        fit_to_model(digits, InputSpec((1, 640), 1.0, 0), 10)
    with pytest.raises(DatasetError, match="not an image"):
        fit_to_model(_ds(np.zeros((2, 640)), [0, 1]), GRAY8, 2)
    with pytest.raises(DatasetError, match="channels"):
        fit_to_model(_ds(np.zeros((2, 8, 8, 2)), [0, 1]), InputSpec((1, 8, 8, 3), 1.0, 0), 2)
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 8, 8)), y=[0, 1])
    with pytest.raises(DatasetError, match="needs arrays 'x' and 'y'"):
        load_dataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "count.npz", x=np.zeros((3, 8, 8)), y=[0, 1])
    with pytest.raises(DatasetError, match="3 samples but 2 labels"):
        load_dataset(tmp_path / "count.npz")
    with pytest.raises(DatasetError, match="no data set"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_dataset(tmp_path / "empty")
