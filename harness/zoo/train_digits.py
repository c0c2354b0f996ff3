"""Train digits_cnn on scikit-learn's bundled 8x8 digits and write harness/zoo/digits_cnn.tflite.

    python -m harness.zoo.train_digits [--out PATH]

Plain numpy (no framework needed): conv 3x3x16 + ReLU, conv 3x3x32 stride 2 + ReLU, fully connected to
10 classes, trained with Adam on softmax cross-entropy, seeded, so a run reproduces the committed file.
Then quantized to int8 by harness.model.builder (per-channel weights, activations calibrated on training
images) and measured on the held-out split with the int8 numpy reference (bit-exact with TFLite).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from harness.model.ir import conv_out_size

SEED = 0
EPOCHS = 40
BATCH = 32
LR = 2e-3


def _im2col(x: np.ndarray, k: int, stride: int) -> tuple[np.ndarray, tuple]:
    """[N,H,W,C] -> [N,OH,OW,k*k*C] with TFLite's SAME padding (the extra row/column at the end)."""
    n, h, w, c = x.shape
    oh, top = conv_out_size(h, k, stride, 1, "SAME")
    ow, left = conv_out_size(w, k, stride, 1, "SAME")
    ph, pw = (oh - 1) * stride + k, (ow - 1) * stride + k
    xp = np.zeros((n, ph, pw, c), x.dtype)
    xp[:, top : top + h, left : left + w] = x
    cols = np.stack(
        [
            xp[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride]
            for i in range(k)
            for j in range(k)
        ],
        axis=3,
    )  # [N,OH,OW,k*k,C]
    return cols.reshape(n, oh, ow, k * k * c), (x.shape, top, left, ph, pw, oh, ow)


def _col2im(dcols: np.ndarray, k: int, stride: int, meta: tuple) -> np.ndarray:
    (n, h, w, c), top, left, ph, pw, oh, ow = meta
    d = dcols.reshape(n, oh, ow, k * k, c)
    dxp = np.zeros((n, ph, pw, c), dcols.dtype)
    for t, (i, j) in enumerate((i, j) for i in range(k) for j in range(k)):
        dxp[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride] += d[:, :, :, t]
    return dxp[:, top : top + h, left : left + w]


def _forward(p: dict, x: np.ndarray):
    c1, m1 = _im2col(x, 3, 1)
    z1 = c1 @ p["w1"] + p["b1"]
    a1 = np.maximum(z1, 0)
    c2, m2 = _im2col(a1, 3, 2)
    z2 = c2 @ p["w2"] + p["b2"]
    a2 = np.maximum(z2, 0)
    flat = a2.reshape(len(x), -1)
    return flat @ p["w3"] + p["b3"], (c1, z1, c2, m2, z2, flat)


def train(x_train: np.ndarray, y_train: np.ndarray) -> dict:
    rng = np.random.default_rng(SEED)
    p = {
        "w1": rng.normal(0, np.sqrt(2 / 9), (9, 16)), "b1": np.zeros(16),
        "w2": rng.normal(0, np.sqrt(2 / 144), (144, 32)), "b2": np.zeros(32),
        "w3": rng.normal(0, np.sqrt(1 / 512), (512, 10)), "b3": np.zeros(10),
    }  # fmt: skip
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    x = x_train[..., None] / 16.0
    step = 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for s in range(0, len(x), BATCH):
            idx = order[s : s + BATCH]
            xb, yb = x[idx], y_train[idx]
            logits, (c1, z1, c2, m2, z2, flat) = _forward(p, xb)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            prob = e / e.sum(axis=1, keepdims=True)
            d = prob
            d[np.arange(len(idx)), yb] -= 1
            d /= len(idx)
            g = {"w3": flat.T @ d, "b3": d.sum(0)}
            dz2 = (d @ p["w3"].T).reshape(z2.shape) * (z2 > 0)
            g["w2"] = c2.reshape(-1, 144).T @ dz2.reshape(-1, 32)
            g["b2"] = dz2.sum((0, 1, 2))
            dz1 = _col2im(dz2 @ p["w2"].T, 3, 2, m2) * (z1 > 0)
            g["w1"] = c1.reshape(-1, 9).T @ dz1.reshape(-1, 16)
            g["b1"] = dz1.sum((0, 1, 2))
            step += 1
            for k in p:  # Adam
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
                p[k] -= LR * (m[k] / (1 - 0.9**step)) / (np.sqrt(v[k] / (1 - 0.999**step)) + 1e-8)
    return p


def quantize(p: dict, calib: np.ndarray):
    """The trained float network as an int8 graph; inputs are the raw 0..16 pixel values."""
    from harness.model.builder import GraphBuilder

    b = GraphBuilder(
        "digits_cnn",
        calib[..., None],
        seed=SEED,
        input_range=(0.0, 16.0),
        description="digits_cnn: trained on scikit-learn digits by harness/zoo/train_digits.py",
    )
    # weights in the builder's layouts: conv [O,KH,KW,I], FC [O,I]; the 1/16 input scaling folds into conv1
    w1 = (p["w1"] / 16.0).reshape(3, 3, 1, 16).transpose(3, 0, 1, 2)
    x = b.conv(b.input, 16, 3, 1, "SAME", "RELU", name="conv1", weights=(w1, p["b1"]))
    w2 = p["w2"].reshape(3, 3, 16, 32).transpose(3, 0, 1, 2)
    x = b.conv(x, 32, 3, 2, "SAME", "RELU", name="conv2", weights=(w2, p["b2"]))
    x = b.reshape(x, (1, 512), name="flatten")
    return b.finish(b.fc(x, 10, "NONE", name="logits", weights=(p["w3"].T, p["b3"])))


def int8_accuracy(graph, x: np.ndarray, y: np.ndarray) -> float:
    from harness import reference

    t = graph.tensors[graph.inputs[0]]
    s, zp = float(t.quant.scale[0]), int(t.quant.zero_point[0])
    hits = 0
    for img, label in zip(x, y, strict=True):
        q = np.clip(np.round(img / s) + zp, -128, 127).astype(np.int8).reshape(t.shape)
        hits += int(np.argmax(reference.run(graph, [q])[0]) == label)
    return hits / len(y)


def main(argv: list[str] | None = None) -> int:
    from harness.model import save_model
    from harness.zoo import DIGITS_TFLITE, digits_split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DIGITS_TFLITE))
    args = ap.parse_args(argv)
    x_train, y_train, x_test, y_test = digits_split()
    p = train(x_train, y_train)
    logits, _ = _forward(p, x_test[..., None] / 16.0)
    print(f"float top-1 on the held-out split: {np.mean(logits.argmax(1) == y_test):.4f}")
    graph = quantize(p, x_train[:300])
    print(f"int8 top-1 on the held-out split:  {int8_accuracy(graph, x_test, y_test):.4f}")
    save_model(graph, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
