"""Labelled data sets for on-device accuracy, and their preprocessing to a model's int8 input.

Three sources, chosen by `load_dataset(spec)`:

* ``digits``: the fixed held-out split of scikit-learn's 8x8 digits (the split the zoo's digits_cnn was
  trained around, so its accuracy means something);
* a folder with one sub-folder per class holding images (PNG, JPEG, PGM/PPM, ...);
* an ``.npz`` file with arrays ``x`` (samples) and ``y`` (integer labels), optionally ``classes`` (names)
  and ``value_range`` (lo, hi).

A `Dataset` is model-independent: raw samples in their natural value range. `fit_to_model` turns it into the
int8 tensors one model takes (resize, channels, value range, quantization), and refuses, before anything
runs, a data set that cannot fit (shapes, more classes than the model has outputs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pnm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# ITU-R BT.601 luma: the weights every common "convert to grayscale" uses.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class DatasetError(HarnessError):
    """The data set cannot be read, or does not fit the model it is meant for."""


@dataclass
class Dataset:
    name: str  # what the report calls it
    source: str  # "digits" | "folder" | "npz"
    samples: list[np.ndarray]  # one array per sample, (H, W), (H, W, C) or (N,); images may differ in size
    labels: np.ndarray  # int64 [len(samples)]
    classes: list[str]  # class index -> name
    value_range: tuple[float, float]  # the samples' natural range (e.g. 0..16 digits, 0..255 images)
    path: str | None = None
    # How sample values map to the model's input by default: "raw" (they ARE the real values, quantized with
    # the input's scale and zero point: float features, digits_cnn's 0..16 pixels), "auto" (stretch
    # value_range over the input's range: 0..255 pixels) or "int8" (they are the input tensor's int8 values).
    default_mapping: str = "raw"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class InputSpec:
    """What a model's (single) input takes: the int8 tensor, and the float boundary in front of it if any."""

    shape: tuple[int, ...]  # the int8 tensor's shape, batch included
    scale: float
    zero_point: int
    boundary: object | None = None  # harness.model.params.BoundaryParams when the model takes floats

    @property
    def real_range(self) -> tuple[float, float]:
        """The real values the int8 tensor can represent."""
        return (self.scale * (-128 - self.zero_point), self.scale * (127 - self.zero_point))


@dataclass
class FittedData:
    """A data set made into one model's int8 inputs."""

    x: np.ndarray  # int8 [N, *input shape]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    num_outputs: int
    mapping: str  # a readable description of the preprocessing
    digest: str  # sha256 of the int8 inputs and labels: the same data and model give the same digest
    notes: list[str] = field(default_factory=list)


# --- loading -------------------------------------------------------------------------------------------


def load_dataset(spec: str | Path) -> Dataset:
    """`digits`, a folder of class sub-folders of images, or an .npz with `x` and `y`."""
    text = str(spec)
    if text == "digits":
        return digits_dataset()
    path = Path(text).expanduser()
    if not path.exists():
        raise DatasetError(
            f"no data set {text!r}: give 'digits', a folder with one sub-folder of images per class, "
            "or an .npz file with arrays x and y"
        )
    if path.is_dir():
        return load_folder(path)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    raise DatasetError(f"{path}: not a folder or an .npz file (a data set is 'digits', a folder, or an .npz)")


def digits_dataset() -> Dataset:
    """The held-out test split of scikit-learn's digits, exactly as the zoo's digits_cnn defines it."""
    try:
        from harness.zoo import digits_split
    except ImportError:
        digits_split = None
    if digits_split is not None:
        _, _, x_test, y_test = digits_split()
        note = "scikit-learn digits, held-out split (harness.zoo.digits_split)"
    else:  # the zoo's split is the contract; this mirrors it only while the zoo has none
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        _, x_test, _, y_test = train_test_split(d.data, d.target, test_size=0.25, random_state=0, stratify=d.target)
        note = "scikit-learn digits, 25 % stratified held-out split (random_state 0): harness.zoo has no split"
    x_test = np.asarray(x_test, dtype=np.float32)
    samples = [s.reshape(8, 8) if s.size == 64 else s for s in x_test]
    return Dataset(
        name="digits",
        source="digits",
        samples=samples,
        labels=np.asarray(y_test, dtype=np.int64).reshape(-1),
        classes=[str(i) for i in range(10)],
        value_range=(0.0, 16.0),
        default_mapping="raw",
        notes=[note],
    )


def load_npz(path: str | Path) -> Dataset:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if not {"x", "y"} <= files:
                raise DatasetError(f"{path}: an .npz data set needs arrays 'x' and 'y'; it has {sorted(files)}")
            x = np.asarray(z["x"])
            y = np.asarray(z["y"])
            classes = [str(c) for c in z["classes"]] if "classes" in files else None
            vr = tuple(float(v) for v in z["value_range"]) if "value_range" in files else None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read as .npz ({e})") from e
    if x.ndim < 2:
        raise DatasetError(f"{path}: x must be [samples, ...], it has shape {x.shape}")
    if len(x) == 0:
        raise DatasetError(f"{path}: the data set has no samples (x has shape {x.shape})")
    notes: list[str] = []
    if y.dtype.kind in "USO":  # class names, not indices
        y, classes, note = _named_labels(y, classes, str(path))
        notes.append(note)
    y = _labels(y, len(x), str(path))
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DatasetError(f"{path}: x must be numeric, it is {x.dtype}")
    if vr is None:
        vr = _natural_range(x)
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1 if y.size else 0)]
    return Dataset(
        name=path.name,
        source="npz",
        samples=list(x),
        labels=y,
        classes=classes,
        value_range=(float(vr[0]), float(vr[1])),
        path=str(path),
        # int8: the input tensor's own values; uint8: pixels, stretched over the input's range; anything
        # else: real values in the model's units, quantized as they are
        default_mapping={np.dtype(np.int8): "int8", np.dtype(np.uint8): "auto"}.get(x.dtype, "raw"),
        notes=notes,
    )


def _named_labels(y: np.ndarray, classes: list[str] | None, where: str) -> tuple[np.ndarray, list[str], str]:
    """Labels given as class names: indices into `classes` when the file has that array, else into the sorted
    names (said, since the model's output order is not known here)."""
    names = [str(v) for v in np.asarray(y).reshape(-1)]
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DatasetError(
                f"{where}: labels {', '.join(map(repr, unknown[:5]))} are not in the file's 'classes' array"
            )
        return np.array([index[n] for n in names]), classes, "labels are class names, indexed by 'classes'"
    order = sorted(set(names))
    index = {c: i for i, c in enumerate(order)}
    shown = ", ".join(f"{c}={i}" for c, i in list(index.items())[:6]) + (", ..." if len(order) > 6 else "")
    return (
        np.array([index[n] for n in names]),
        order,
        f"labels are class names, numbered in sorted order ({shown}): add a 'classes' array to the .npz "
        "if the model's outputs are in another order",
    )


def load_folder(path: str | Path) -> Dataset:
    """One sub-folder per class. Class indices: the folder names' numbers when all are integers (so `0/`..`9/`
    line up with the model's outputs), else the sorted names."""
    path = Path(path)
    dirs = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not dirs:
        raise DatasetError(f"{path}: no class sub-folders (expected e.g. {path}/cat/*.png, {path}/dog/*.png)")
    if all(d.name.isdigit() for d in dirs):
        index = {d.name: int(d.name) for d in dirs}
        n = max(index.values()) + 1
        classes = [str(i) for i in range(n)]
    else:
        index = {d.name: i for i, d in enumerate(dirs)}
        classes = [d.name for d in dirs]
    samples: list[np.ndarray] = []
    labels: list[int] = []
    for d in dirs:
        files = [f for f in sorted(d.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        for f in files:
            samples.append(read_image(f))
            labels.append(index[d.name])
    if not samples:
        raise DatasetError(f"{path}: the class folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    top = max(float(np.max(s)) for s in samples)
    return Dataset(
        name=path.name,
        source="folder",
        samples=samples,
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
        value_range=(0.0, 255.0 if top > 1.0 else 1.0),
        path=str(path),
        default_mapping="auto",  # decoded pixels, 0..255 (or 0..1)
    )


def read_image(path: str | Path) -> np.ndarray:
    """An image as (H, W) or (H, W, C) with values 0..255 (float32). PGM/PPM are read without any library
    (so 16-bit PGM keeps its depth: scaled to 0..255); the rest through Pillow (a matplotlib dependency)."""
    path = Path(path)
    if path.suffix.lower() in (".pgm", ".ppm", ".pnm"):
        return read_pnm(path)
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - matplotlib requires Pillow
        raise DatasetError(f"{path}: reading {path.suffix} needs Pillow; use PNG/PGM/PPM or an .npz") from e
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
            return np.asarray(im, dtype=np.float32)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from e


def read_pnm(path: str | Path) -> np.ndarray:
    """Netpbm P2/P5 (gray) and P3/P6 (RGB), 8 or 16 bit."""
    path = Path(path)
    data = path.read_bytes()
    magic = data[:2]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise DatasetError(f"{path}: not a PGM/PPM file (magic {magic!r})")
    channels = 3 if magic in (b"P3", b"P6") else 1
    # Header: magic, width, height, maxval as whitespace-separated tokens; '#' starts a comment.
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise DatasetError(f"{path}: truncated PGM/PPM header")
        tokens.append(data[start:pos])
    try:
        width, height, maxval = (int(t) for t in tokens)
    except ValueError as e:
        raise DatasetError(f"{path}: malformed PGM/PPM header {tokens}") from e
    if not (0 < maxval < 65536) or width <= 0 or height <= 0:
        raise DatasetError(f"{path}: PGM/PPM header out of range: {width}x{height}, maxval {maxval}")
    count = width * height * channels
    if magic in (b"P2", b"P3"):
        values = np.array(data[pos:].split()[:count], dtype=np.float64)
    else:
        pos += 1  # exactly one whitespace byte separates the header from binary data
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        raw = data[pos : pos + count * dtype.itemsize]
        values = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize).astype(np.float64)
    if values.size != count:
        raise DatasetError(f"{path}: expected {count} pixel values, found {values.size}")
    img = values.reshape((height, width, channels) if channels == 3 else (height, width))
    return (img * (255.0 / maxval)).astype(np.float32)


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim <= 1 else np.asarray(y)
    if y.ndim == 2:  # one-hot
        y = np.argmax(y, axis=1)
    if y.shape[0] != n:
        raise DatasetError(f"{where}: {n} samples but {y.shape[0]} labels")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DatasetError(f"{where}: labels must be integer class indices, got {y.dtype} values")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DatasetError(f"{where}: negative label {int(y.min())}")
    return y


def _natural_range(x: np.ndarray) -> tuple[float, float]:
    if x.dtype == np.uint8:
        return (0.0, 255.0)
    if x.dtype == np.int8:
        return (-128.0, 127.0)
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo >= 0 and hi <= 1:
        return (0.0, 1.0)
    if lo >= 0 and hi <= 255 and hi > 1:
        return (0.0, 255.0)
    return (lo, hi)


# --- preprocessing -------------------------------------------------------------------------------------


def _interior(graph):
    """The int8 graph and the input boundary params; split only when the model has a float boundary (an
    all-int8 model is its own interior)."""
    io = [graph.tensors[i].dtype for i in list(graph.inputs) + list(graph.outputs)]
    if all(d == "int8" for d in io):
        return graph, [None] * len(graph.inputs)
    from harness.model.boundary import split_boundary

    interior, in_bps, _ = split_boundary(graph)
    return interior, list(in_bps)


def input_spec(graph) -> InputSpec:
    """The single int8 input of `graph` (after the float boundary, if any)."""
    interior, in_bps = _interior(graph)
    if len(interior.inputs) != 1:
        raise DatasetError(f"model {graph.name!r} has {len(interior.inputs)} inputs: accuracy runs need a single input")
    t = interior.tensors[interior.inputs[0]]
    if t.quant is None:
        raise DatasetError(f"model input {t.name!r} has no quantization parameters")
    return InputSpec(tuple(t.shape), t.quant.s, t.quant.zp, in_bps[0] if in_bps else None)


def output_size(graph) -> int:
    interior, _ = _interior(graph)
    if len(interior.outputs) != 1:
        raise DatasetError(
            f"model {graph.name!r} has {len(interior.outputs)} outputs: accuracy runs need one output of class scores"
        )
    return interior.tensors[interior.outputs[0]].size


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite's float -> int8: x / scale in float32, round half away from zero, add the zero point, clamp."""
    q = np.asarray(x, dtype=np.float32) / np.float32(scale)
    q = np.sign(q) * np.floor(np.abs(q) + np.float32(0.5))
    return np.clip(q.astype(np.int64) + int(zero_point), -128, 127).astype(np.int8)


def resize(img: np.ndarray, height: int, width: int, method: str = "bilinear") -> np.ndarray:
    """(H, W[, C]) -> (height, width[, C]). Bilinear uses half-pixel centres (what image libraries and
    TF's resize with half_pixel_centers do); nearest picks the pixel whose centre is closest."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.astype(np.float32, copy=False)
    ys = (np.arange(height) + 0.5) * (h / height) - 0.5
    xs = (np.arange(width) + 0.5) * (w / width) - 0.5
    if method == "nearest":
        yi = np.clip(np.floor(ys + 0.5).astype(int), 0, h - 1)
        xi = np.clip(np.floor(xs + 0.5).astype(int), 0, w - 1)
        return img[yi][:, xi].astype(np.float32)
    if method != "bilinear":
        raise DatasetError(f"unknown resize method {method!r}: use 'bilinear' or 'nearest'")
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0), (xs - x0)
    a = img.astype(np.float64)
    if a.ndim == 3:
        fy, fx = fy[:, None, None], fx[None, :, None]
    else:
        fy, fx = fy[:, None], fx[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def to_channels(img: np.ndarray, channels: int, order: str = "rgb") -> np.ndarray:
    """(H, W[, C]) -> (H, W, channels): grayscale by BT.601 luma, gray replicated to RGB, RGB <-> BGR."""
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == 4:  # alpha carries no class information
        img, c = img[:, :, :3], 3
    if c == channels:
        out = img
    elif channels == 1 and c == 3:
        out = (img.astype(np.float64) @ LUMA)[:, :, None]
    elif channels == 3 and c == 1:
        out = np.repeat(img, 3, axis=2)
    else:
        raise DatasetError(f"cannot turn {c}-channel images into the model's {channels} channels")
    if channels == 3 and order == "bgr":
        out = out[:, :, ::-1]
    elif order not in ("rgb", "bgr"):
        raise DatasetError(f"unknown channel order {order!r}: use 'rgb' or 'bgr'")
    return out.astype(np.float32)


def parse_mapping(text: str | None) -> str | tuple[float, float] | None:
    """'auto', 'raw', 'int8', or 'LO:HI' (the real range the data set's value range is stretched over)."""
    if text is None or text in ("auto", "raw", "int8"):
        return text
    try:
        lo, hi = (float(v) for v in str(text).split(":"))
    except ValueError as e:
        raise DatasetError(f"input range {text!r}: use 'raw', 'auto', 'int8' or LO:HI such as 0:1 or -1:1") from e
    if not hi > lo:
        raise DatasetError(f"input range {text!r}: HI must exceed LO")
    return (lo, hi)


def fit_to_model(
    ds: Dataset,
    spec: InputSpec,
    num_outputs: int,
    *,
    mapping: str | tuple[float, float] | None = None,
    resize_method: str | None = None,
    channel_order: str = "rgb",
    limit: int | None = None,
) -> FittedData:
    """The int8 inputs `spec` takes, one per sample, or a DatasetError saying why the data cannot fit.

    mapping: how a sample's values become the model's input. "raw": they are the real values, quantized with
    the input's scale and zero point; "auto": the data set's value range is stretched linearly over the range
    the input can represent (so 0..255 pixels become 0..1 for a 1/255-scaled input); (lo, hi): stretched over
    lo..hi; "int8": they are the int8 tensor's values, sent as they are. None: the data set's default.
    resize_method: None refuses images of another size or channel count than the input's (a user's data
    is not changed unasked); "bilinear" or "nearest" resizes them and converts their channels.
    """
    if len(ds) == 0:
        raise DatasetError(f"data set {ds.name!r} is empty")
    used = ds.labels if limit is None else ds.labels[:limit]
    top = int(used.max())
    if top >= num_outputs:
        n_classes = len(ds.classes)
        raise DatasetError(
            f"data set {ds.name!r} has {n_classes} classes (labels up to {top}) but the model has only "
            f"{num_outputs} outputs: it is not a classifier for these classes"
        )
    notes = list(ds.notes)
    if len(ds.classes) < num_outputs:
        notes.append(f"the model has {num_outputs} outputs; the data set covers {len(ds.classes)} classes")
    classes = list(ds.classes) + [str(i) for i in range(len(ds.classes), num_outputs)]
    mapping = mapping or ds.default_mapping
    shape = tuple(spec.shape)
    body = shape[1:] if len(shape) >= 2 and shape[0] == 1 else shape
    count = len(used)
    is_image = len(body) == 3
    x = np.empty((count, *shape), dtype=np.int8)
    real_lo, real_hi = spec.real_range
    if mapping == "raw":
        lo_hi = None
        how = "sample values are the model's real input"
    elif mapping == "int8":
        lo_hi = None
        how = "int8 samples sent as they are (the input tensor's own values)"
    elif mapping == "auto":
        lo_hi = (real_lo, real_hi)
        how = f"{ds.value_range[0]:g}..{ds.value_range[1]:g} stretched to the input's {real_lo:g}..{real_hi:g}"
    elif isinstance(mapping, tuple):
        lo_hi = mapping
        how = f"{ds.value_range[0]:g}..{ds.value_range[1]:g} stretched to {mapping[0]:g}..{mapping[1]:g}"
    else:
        raise DatasetError(f"unknown input mapping {mapping!r}: use 'raw', 'auto', 'int8' or (lo, hi)")
    if resize_method not in (None, "bilinear", "nearest"):
        raise DatasetError(f"unknown resize method {resize_method!r}: use 'bilinear' or 'nearest'")
    resized = converted = False
    clamped = values = 0
    for i in range(count):
        s = np.asarray(ds.samples[i], dtype=np.float32)
        if is_image:
            s = _as_image(s, body, ds.name, i)
            channels = s.shape[2] if s.ndim == 3 else 1
            if (s.shape[:2] != body[:2] or channels != body[2]) and resize_method is None:
                raise DatasetError(
                    f"data set {ds.name!r}: sample {i} is a {s.shape[0]}x{s.shape[1]}x{channels} image; the "
                    f"model takes {body[0]}x{body[1]}x{body[2]}: give data of the input's shape, or pass "
                    "--resize bilinear (or nearest) to resize the images and convert their channels"
                )
            if s.shape[:2] != body[:2]:
                resized = True
                s = resize(s, body[0], body[1], resize_method or "bilinear")
            converted |= channels != body[2]
            s = to_channels(s, body[2], channel_order)
        elif s.size != int(np.prod(body)):
            raise DatasetError(
                f"data set {ds.name!r}: sample {i} has shape {s.shape} ({s.size} values); the model's input "
                f"{shape} takes {int(np.prod(body))} values"
            )
        s = s.reshape(body)
        if mapping == "int8":
            if np.any((s < -128) | (s > 127) | (s != np.round(s))):
                raise DatasetError(
                    f"data set {ds.name!r}: sample {i} holds values that are not int8 (--input-range int8 sends "
                    "samples as the input tensor's values): use 'raw' or 'auto' for real values"
                )
            x[i] = s.astype(np.int8).reshape(shape)
            continue
        if lo_hi is not None:
            vlo, vhi = ds.value_range
            s = (s - vlo) * ((lo_hi[1] - lo_hi[0]) / ((vhi - vlo) or 1.0)) + lo_hi[0]
        if spec.boundary is not None:
            from harness.model.boundary import quantize_input

            q = np.asarray(quantize_input(s.astype(np.float32), spec.boundary), dtype=np.int8)
        else:
            q = quantize(s, spec.scale, spec.zero_point)
            # what the int8 range cannot hold: half a step beyond either end
            step = spec.scale / 2
            clamped += int(np.count_nonzero((s < real_lo - step) | (s > real_hi + step)))
            values += s.size
        x[i] = q.reshape(shape)
    if resized:
        how += f"; resized to {body[0]}x{body[1]} ({resize_method})"
        notes.append(f"images resized to {body[0]}x{body[1]} ({resize_method})")
    if is_image:
        how += f"; {body[2]} channel{'s' if body[2] > 1 else ''}"
        if body[2] == 3:
            how += f" ({channel_order})"
        if converted:
            notes.append(f"image channels converted to {body[2]} ({'grey by BT.601 luma' if body[2] == 1 else 'RGB'})")
    if mapping != "int8":
        how += f"; quantized with scale {spec.scale:g}, zero point {spec.zero_point}"
    if clamped:
        notes.append(
            f"{clamped:,} of {values:,} values ({100 * clamped / values:.1f} %) lie outside the input's "
            f"{real_lo:g}..{real_hi:g} and were clamped: is --input-range right?"
        )
    h = hashlib.sha256()
    h.update(repr(shape).encode())
    h.update(x.tobytes())
    h.update(used.astype(np.int64).tobytes())
    return FittedData(x, used.astype(np.int64).copy(), classes, num_outputs, how, h.hexdigest(), notes)


def _as_image(s: np.ndarray, body: tuple[int, ...], name: str, i: int) -> np.ndarray:
    """A sample as (H, W[, C]) for an image model: flat samples only when they hold exactly one image."""
    if s.ndim in (2, 3):
        if s.ndim == 3 and s.shape[2] not in (1, 3, 4):
            raise DatasetError(
                f"data set {name!r}: sample {i} has shape {s.shape}: {s.shape[2]} channels; "
                f"the model takes {body[0]}x{body[1]}x{body[2]} images"
            )
        return s
    if s.ndim == 1 and s.size == int(np.prod(body)):
        return s.reshape(body)
    raise DatasetError(
        f"data set {name!r}: sample {i} has shape {s.shape}, which is not an image; the model takes "
        f"{body[0]}x{body[1]}x{body[2]} images"
    )
