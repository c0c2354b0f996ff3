"""The model zoo: named models, built here as real int8 graphs (and .tflite files) since nothing can be
downloaded. Architectures follow their publications; weights are synthetic (deterministic, per-channel,
calibrated: representative for speed and memory, not for accuracy), except digits_cnn, trained on
scikit-learn's bundled digits and shipped as a .tflite file."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import HarnessError, did_you_mean
from harness.model import Graph, load_model, save_model
from harness.zoo import architectures as arch

HERE = Path(__file__).resolve().parent
DIGITS_TFLITE = HERE / "digits_cnn.tflite"
SYNTHETIC = "synthetic (accuracy not representative)"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str
    input_shape: tuple[int, ...]
    classes: int
    source: str
    make: Callable[[], Graph] = field(repr=False, compare=False)
    weights: str = SYNTHETIC
    published: dict = field(default_factory=dict)  # macs, params, peak SRAM... with where they come from


def _entries() -> dict[str, ZooEntry]:
    mcunet = "MCUNet model zoo (mit-han-lab/mcunet, Lin et al., NeurIPS 2020)"
    e = [
        ZooEntry("mcunet_vww0", "visual wake words", (1, 64, 64, 3), 2, f"{mcunet}: mcunet-10fps_vww (config derived)",
                 lambda: arch.inverted_residual_net("mcunet_vww0", 64, arch.MCUNET_VWW0, seed=10),
                 published={"macs": 6.0e6, "params": 0.37e6, "peak_sram_tflm": 163e3, "peak_sram_tinyengine": 59e3}),
        ZooEntry("mcunet_vww1", "visual wake words", (1, 80, 80, 3), 2, f"{mcunet}: mcunet-5fps_vww",
                 lambda: arch.inverted_residual_net("mcunet_vww1", 80, arch.MCUNET_VWW1, seed=11),
                 published={"macs": 11.58e6, "params": 0.43e6, "peak_sram_tflm": 220e3, "peak_sram_tinyengine": 92e3}),
        ZooEntry("mcunet_vww2", "visual wake words", (1, 144, 144, 3), 2,
                 f"{mcunet}: mcunet-320kb-1mb_vww (config derived)",
                 lambda: arch.inverted_residual_net("mcunet_vww2", 144, arch.MCUNET_VWW2, seed=12),
                 published={"macs": 55.8e6, "params": 0.64e6, "peak_sram_tflm": 385e3, "peak_sram_tinyengine": 174e3}),
        ZooEntry("mlperf_vww", "visual wake words", (1, 96, 96, 3), 2,
                 "MLPerf Tiny v0.5 VWW reference: MobileNetV1-0.25 (mlcommons/tiny)",
                 lambda: arch.mlperf_vww(seed=20), published={"macs": 7.49e6, "params": 0.2109e6}),
        ZooEntry("mlperf_kws", "keyword spotting", (1, 49, 10, 1), 12,
                 "MLPerf Tiny v0.5 KWS reference: DS-CNN small (mlcommons/tiny)",
                 lambda: arch.mlperf_kws(seed=21), published={"macs": 2.66e6, "params": 22.6e3}),
        ZooEntry("mlperf_resnet8", "image classification (CIFAR-10)", (1, 32, 32, 3), 10,
                 "MLPerf Tiny v0.5 IC reference: ResNet-8 (mlcommons/tiny)",
                 lambda: arch.mlperf_resnet8(seed=22), published={"macs": 12.50e6, "params": 77.7e3}),
        ZooEntry("mlperf_ad", "anomaly detection", (1, 640), 640,
                 "MLPerf Tiny v0.5 AD reference: FC autoencoder (mlcommons/tiny, DCASE 2020 baseline)",
                 lambda: arch.mlperf_ad(seed=23), published={"macs": 0.264e6, "params": 0.266e6}),
        ZooEntry("mbv2_vww", "visual wake words", (1, 96, 96, 3), 2,
                 "MobileNetV2-0.35 (Sandler et al. 2018) at 96x96, 2 classes: the MCUNet paper's VWW baseline family",
                 lambda: arch.mobilenet_v2("mbv2_vww", 96, 0.35, 2, seed=24),
                 published={"note": "MobileNetV2-0.35 at 224x224 with 1000 classes: 59 M MACs, 1.66 M params "
                                    "(Keras applications table); tests check that configuration"}),
        ZooEntry("digits_cnn", "handwritten digits (8x8)", (1, 8, 8, 1), 10,
                 "a small CNN trained here (harness/zoo/train_digits.py)", lambda: load_model(DIGITS_TFLITE),
                 weights="trained on scikit-learn digits"),
    ]  # fmt: skip
    return {x.name: x for x in e}


ZOO: dict[str, ZooEntry] = _entries()
ALIASES = {"mcunet_vww": "mcunet_vww1"}  # the model TinyEngine's VWW demo deploys


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


@functools.cache
def _built(name: str) -> Graph:
    return ZOO[name].make()


def build(name: str) -> Graph:
    """The zoo model `name` (or an alias) as a Graph; the same name gives the same graph every time."""
    name = canonical(name)
    if name not in ZOO:
        raise HarnessError(f"unknown zoo model {name!r}; the zoo has: {', '.join(names())}")
    return copy.deepcopy(_built(name))


def names() -> list[str]:
    return sorted(ZOO) + sorted(ALIASES)


def resolve_model(name_or_path: str) -> tuple[Graph, str]:
    """A zoo name, or a path to any .tflite -> (graph, label)."""
    if canonical(name_or_path) in ZOO:
        return build(name_or_path), name_or_path
    path = Path(name_or_path)
    if path.suffix == ".tflite" or path.exists():
        return load_model(path), path.name
    raise HarnessError(
        f"unknown model {name_or_path!r}{did_you_mean(str(name_or_path), names())}: not a file, and not in "
        f"the zoo ({', '.join(names())})"
    )


def export(name: str, path: str | Path) -> Path:
    """Write a zoo model as a .tflite file that the TFLite interpreter (and other tools) load."""
    path = Path(path)
    save_model(build(name), path)
    return path


def models_table() -> list[dict]:
    """One row per zoo model: shapes, MACs, params, weight flash, the planner's arena and the boards it fits."""
    from harness.boards import load_boards
    from harness.engines.native.emit import analyse
    from harness.model.boundary import split_boundary

    boards = [b for b in load_boards().values() if not b.is_qemu]
    rows = []
    for name in sorted(ZOO):
        entry, graph = ZOO[name], build(name)
        interior = split_boundary(graph)[0]
        arena = analyse(interior, fuse_layers=True)[0].arena_bytes  # the plan bench builds (fused groups)
        weights = graph.weight_bytes()
        # An estimate for the table: ~40 KiB of code and ~12 KiB of stack and runtime beside the weights and
        # the arena. `harness bench` measures the real figures from the ELF and the device.
        fits = [b.name for b in boards if weights + 40 * 1024 <= b.flash_bytes and arena + 12 * 1024 <= b.sram_bytes]
        rows.append(
            {
                "name": name,
                "aliases": [a for a, n in ALIASES.items() if n == name],
                "task": entry.task,
                "input_shape": list(entry.input_shape),
                "macs": graph.macs(),
                "params": graph.params(),
                "weight_bytes": weights,
                "arena_bytes": arena,
                "weights": entry.weights,
                "fits": fits,
                "source": entry.source,
            }
        )
    return rows


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (pixel values 0..16, shape [N, 8, 8]), split 75/25, stratified,
    random_state 0: digits_cnn was trained on the first part and is measured on the second."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    return x_train, y_train, x_test, y_test
