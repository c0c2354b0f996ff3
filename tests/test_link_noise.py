"""The protocol through a noisy link (1 % flipped, 0.5 % dropped, 0.5 % duplicated bytes, both ways): the
run completes with the clean run's figures exactly. tests/link_noise.py runs the whole experiment."""

from __future__ import annotations

from conftest import require_tools
from link_noise import one


def test_a_bench_through_a_noisy_link_gives_the_clean_figures():
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    clean, _, why = one("mlperf_kws", "qemu-m4", None)
    assert clean is not None, why
    noisy, _, why = one("mlperf_kws", "qemu-m4", "flip=0.01,drop=0.005,dup=0.005,seed=3")
    assert noisy == clean, why


def test_long_figures_and_layer_stamps_through_a_noisy_link_are_the_clean_ones():
    """120 repetitions (972 bytes of figures) and a profiling build (a stamp a layer): frames far too long
    for this link, which come in slices."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    bench = {"repetitions": 120, "layers": True, "inputs": 1}
    clean, _, why = one("mlperf_kws", "qemu-m4", None, **bench)
    assert clean is not None, why
    noisy, _, why = one("mlperf_kws", "qemu-m4", "flip=0.01,drop=0.005,dup=0.005,seed=5", **bench)
    assert noisy == clean, why
