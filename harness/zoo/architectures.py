"""The zoo's architectures, as published, built with synthetic int8 weights (harness.model.builder).

Every function takes a GraphBuilder-making `start(name, input_shape, input_range)` and returns a Graph. The
published figures each configuration is checked against (MACs count conv, depthwise and FC multiply-
accumulates; params count weights and biases) are in ZOO (harness/zoo/__init__.py) and tests/test_zoo.py.
"""

from __future__ import annotations

import numpy as np

from harness.model.builder import GraphBuilder

# MCUNet inverted-residual blocks: (kernel, expand ratio, out channels, stride).
# mcunet-5fps_vww (vww1), 80x80: the published block table (MCUNet model zoo, net id "mcunet-5fps_vww"; its int8
# file counts 11.58 M MACs and 0.43 M params). Ours: 11.58 M MACs, 0.427 M params.
MCUNET_VWW1 = [
    (3, 1, 8, 1), (3, 6, 16, 2), (3, 3, 16, 1), (3, 3, 16, 1), (7, 3, 24, 2), (3, 6, 24, 1), (5, 5, 24, 1),
    (7, 6, 40, 2), (7, 6, 40, 1), (3, 6, 48, 1), (3, 4, 48, 1), (5, 5, 96, 2), (3, 5, 96, 1), (3, 4, 96, 1),
    (7, 3, 160, 1),
]  # fmt: skip
# mcunet-10fps_vww (vww0), 64x64, published 6.0 M MACs / 0.37 M params. Its per-block configuration is not
# in the MCUNet repository (the zoo downloads it at run time), so this one is DERIVED: vww1's stage widths
# and strides with kernels and expand ratios re-chosen within the TinyNAS search space (k in 3/5/7, e in 3..6)
# to match the published MACs and params: 6.02 M MACs, 0.370 M params.
MCUNET_VWW0 = [
    (3, 1, 8, 1), (3, 6, 16, 2), (3, 3, 16, 1), (3, 3, 16, 1), (7, 3, 24, 2), (3, 4, 24, 1), (5, 5, 24, 1),
    (7, 3, 40, 2), (5, 4, 40, 1), (3, 3, 48, 1), (3, 4, 48, 1), (5, 5, 96, 2), (3, 5, 96, 1), (3, 3, 96, 1),
    (7, 3, 160, 1),
]  # fmt: skip
# mcunet-320kb-1mb_vww (vww2), 144x144, published 55.8 M MACs / 0.64 M params, and (its name) made to fit 320 KB
# of SRAM. DERIVED the same way as vww0, with wider stages (24 -> 40, 96 -> 112, 160 -> 192 channels) and a
# first stride-2 block expanded 3x rather than 6x, since at 72x72 a 6x expansion alone would take 249 KB of
# activations: 55.67 M MACs, 0.641 M params.
MCUNET_VWW2 = [
    (3, 1, 8, 1), (3, 3, 16, 2), (3, 3, 16, 1), (3, 6, 16, 1), (7, 3, 40, 2), (7, 6, 40, 1), (5, 5, 40, 1),
    (7, 6, 40, 2), (7, 6, 40, 1), (3, 6, 48, 1), (3, 5, 48, 1), (7, 5, 112, 2), (3, 5, 112, 1), (3, 5, 112, 1),
    (5, 4, 192, 1),
]  # fmt: skip


def _image_calib(shape: tuple[int, ...], seed: int, batch: int = 4) -> np.ndarray:
    """Smooth random images in [-1, 1] (a few blurred blobs per channel): spatially correlated like photos,
    so activations and their calibrated ranges resemble a real network's more than white noise would."""
    rng = np.random.default_rng(seed)
    _, h, w, c = shape
    coarse = rng.uniform(-1, 1, (batch, max(h // 8, 2), max(w // 8, 2), c))
    ys = np.linspace(0, coarse.shape[1] - 1, h)
    xs = np.linspace(0, coarse.shape[2] - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, coarse.shape[1] - 1), np.minimum(x0 + 1, coarse.shape[2] - 1)
    fy, fx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    top = coarse[:, y0][:, :, x0] * (1 - fx) + coarse[:, y0][:, :, x1] * fx
    bottom = coarse[:, y1][:, :, x0] * (1 - fx) + coarse[:, y1][:, :, x1] * fx
    img = top * (1 - fy) + bottom * fy + rng.normal(0, 0.1, (batch, h, w, c))
    return np.clip(img, -1, 1)


def inverted_residual_net(name, res, blocks, stem=16, classes=2, head=None, seed=0, description="") -> object:
    """MobileNetV2 / MCUNet style: 3x3 stride-2 stem, inverted residual blocks (1x1 expand + ReLU6, kxk
    depthwise + ReLU6, 1x1 linear projection; a residual ADD where stride is 1 and channels match), an
    optional 1x1 head conv, global average pool and the classifier."""
    shape = (1, res, res, 3)
    b = GraphBuilder(name, _image_calib(shape, seed), seed=seed, input_range=(-1.0, 1.0), description=description)
    x = b.conv(b.input, stem, 3, 2, act="RELU6", name="stem")
    for i, (k, e, cout, s) in enumerate(blocks):
        cin = b.shape(x)[3]
        y = x
        if e != 1:
            y = b.conv(y, cin * e, 1, act="RELU6", name=f"block{i}/expand")
        y = b.dwconv(y, k, s, act="RELU6", name=f"block{i}/depthwise")
        y = b.conv(y, cout, 1, act="NONE", name=f"block{i}/project")
        x = b.add(x, y, name=f"block{i}/residual") if s == 1 and cin == cout else y
    if head:
        x = b.conv(x, head, 1, act="RELU6", name="head")
    x = b.global_avgpool(x)
    x = b.reshape(x, (1, b.shape(x)[3]))
    return b.finish(b.fc(x, classes, name="classifier"))


def mobilenet_v2(name, res, alpha=0.35, classes=2, seed=0, description=""):
    """MobileNetV2 (Sandler et al. 2018, table 2) at width `alpha`: channels alpha*c rounded to multiples of
    8 (never below 90 % of alpha*c), the 1280-channel head kept at 1280 for alpha < 1, as the reference
    implementations do."""

    def div8(v: float) -> int:
        r = max(8, int(v + 4) // 8 * 8)
        return r + 8 if r < 0.9 * v else r

    blocks = []
    cin = div8(32 * alpha)
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):  # fmt: skip
        for j in range(n):
            blocks.append((3, t, div8(c * alpha), s if j == 0 else 1))
    return inverted_residual_net(name, res, blocks, stem=cin, classes=classes, head=1280, seed=seed,
                                 description=description)  # fmt: skip


def mlperf_vww(name="mlperf_vww", seed=0, description=""):
    """MLPerf Tiny visual wake words: MobileNetV1 at width 0.25, 96x96x3, ReLU, 2 classes (the structure of
    mlcommons/tiny benchmark/training/visual_wake_words, vww_96_int8.tflite: 7.49 M MACs, 0.21 M params)."""
    shape = (1, 96, 96, 3)
    b = GraphBuilder(name, _image_calib(shape, seed) * 0.5 + 0.5, seed=seed, input_range=(0.0, 1.0),
                     description=description)  # fmt: skip
    x = b.conv(b.input, 8, 3, 2, act="RELU", name="conv0")
    for i, (cout, s) in enumerate([(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1),
                                   (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)]):  # fmt: skip
        x = b.dwconv(x, 3, s, act="RELU", name=f"dw{i + 1}")
        x = b.conv(x, cout, 1, act="RELU", name=f"pw{i + 1}")
    x = b.global_avgpool(x)
    x = b.reshape(x, (1, 256))
    return b.finish(b.softmax(b.fc(x, 2, name="classifier")))


def mlperf_kws(name="mlperf_kws", seed=0, description=""):
    """MLPerf Tiny keyword spotting: DS-CNN (small), 49x10x1 MFCC input, a 10x4 stride-2 conv then four
    depthwise-separable blocks of 64 channels, 12 classes (mlcommons/tiny keyword_spotting, kws_ref_model:
    2.66 M MACs, 22.6 k params)."""
    rng = np.random.default_rng(seed)
    calib = rng.normal(0, 20, (4, 49, 10, 1))
    b = GraphBuilder(name, calib, seed=seed, input_range=(-75.0, 75.0), description=description)
    x = b.conv(b.input, 64, (10, 4), 2, act="RELU", name="conv0")
    for i in range(4):
        x = b.dwconv(x, 3, 1, act="RELU", name=f"dw{i + 1}")
        x = b.conv(x, 64, 1, act="RELU", name=f"pw{i + 1}")
    x = b.global_avgpool(x)
    x = b.reshape(x, (1, 64))
    return b.finish(b.softmax(b.fc(x, 12, name="classifier")))


def mlperf_resnet8(name="mlperf_resnet8", seed=0, description=""):
    """MLPerf Tiny image classification: ResNet-8 for CIFAR-10, 32x32x3, three residual stages of 16/32/64
    channels (1x1 stride-2 shortcuts), 10 classes (mlcommons/tiny image_classification,
    pretrainedResnet_quant: 12.5 M MACs, 77.7 k params)."""
    shape = (1, 32, 32, 3)
    b = GraphBuilder(name, _image_calib(shape, seed) * 127.5 + 127.5, seed=seed, input_range=(0.0, 255.0),
                     description=description)  # fmt: skip
    x = b.conv(b.input, 16, 3, 1, act="RELU", name="conv0")
    for stage, (cout, s) in enumerate([(16, 1), (32, 2), (64, 2)]):
        y = b.conv(x, cout, 3, s, act="RELU", name=f"stage{stage}/conv1")
        y = b.conv(y, cout, 3, 1, act="NONE", name=f"stage{stage}/conv2")
        shortcut = x if s == 1 else b.conv(x, cout, 1, s, act="NONE", name=f"stage{stage}/shortcut")
        x = b.add(shortcut, y, act="RELU", name=f"stage{stage}/add")
    x = b.global_avgpool(x)
    x = b.reshape(x, (1, 64))
    return b.finish(b.softmax(b.fc(x, 10, name="classifier")))


def mlperf_ad(name="mlperf_ad", seed=0, description=""):
    """MLPerf Tiny anomaly detection: the DCASE 2020 FC autoencoder, 640 -> 128 x4 -> 8 -> 128 x4 -> 640
    (mlcommons/tiny anomaly_detection, ad01_int8: 0.26 M MACs, 0.27 M params)."""
    rng = np.random.default_rng(seed)
    calib = rng.normal(0, 10, (16, 640))
    b = GraphBuilder(name, calib, seed=seed, input_range=(-50.0, 50.0), description=description)
    x = b.input
    for i, width in enumerate([128, 128, 128, 128, 8, 128, 128, 128, 128]):
        x = b.fc(x, width, act="RELU", name=f"dense{i + 1}")
    return b.finish(b.fc(x, 640, act="NONE", name="dense10"))
