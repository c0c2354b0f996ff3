"""Shared fixtures. The reference models live outside the repo (../shared/models): tests that need them
skip, saying why, where that folder is absent, and run in CI, where it is present."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# The one kind of skip a CI run may show: something outside this repo is absent or present (a debug probe,
# an installed pyOCD pack, ../shared). Every other skip in CI (a tool `make test` should have installed, a
# module gone missing) would hide tests that must run there, so it fails the run instead.
EXTERNAL = "external: "


def skip_external(reason: str):
    """Skip because of hardware or a resource outside the repo; the only skip CI accepts."""
    pytest.skip(EXTERNAL + reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes") or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.removeprefix("Skipped: ").startswith(EXTERNAL):
        report.outcome = "failed"
        report.longrepr = f"a skip in CI that no absent external resource explains: {reason}"


REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = Path(os.environ.get("HARNESS_SHARED_MODELS", REPO.parent / "shared" / "models"))
SHARED_MODEL_FILES = {
    "vww": "mlperf_vww_96_int8.tflite",
    "kws": "mlperf_kws_ref_int8.tflite",
    "ic": "mlperf_ic_resnet8_int8.tflite",
    "ad01": "mlperf_ad01_int8.tflite",
    "person_detect": "tflm_person_detect_int8.tflite",
}


def shared_model(key: str) -> Path:
    """Path of one reference model, or a skip that says why it is missing."""
    path = SHARED_MODELS / SHARED_MODEL_FILES[key]
    if not path.is_file():
        skip_external(f"reference model {path} is absent (../shared/models is only present in CI)")
    return path


def oracle_bytes(key: str) -> bytes:
    """What the interpreter is given for a reference model: its original file, with only person_detect's
    stray quantized_dimension patched in place (LiteRT rejects it). Never our reader/writer's round trip,
    which would let a reader bug that survives it go unseen."""
    from harness.oracle import litert_compatible

    raw = shared_model(key).read_bytes()
    return litert_compatible(raw) if key == "person_detect" else raw


@pytest.fixture(params=sorted(SHARED_MODEL_FILES))
def shared_model_path(request) -> Path:
    return shared_model(request.param)


THIRD_PARTY = Path(os.environ.get("HARNESS_THIRD_PARTY", REPO.parent / "shared" / "third_party"))


@pytest.fixture
def tflm_sources(monkeypatch) -> Path:
    """HARNESS_TFLM_ROOT pointed at ../shared/third_party (TFLite Micro, CMSIS-NN and their dependencies at
    the pinned commits), or a skip that says why it is absent. The compiled library is cached in the user's
    cache (~/.cache/harness), so a whole test run builds each variant once."""
    if not (THIRD_PARTY / "tflite-micro").is_dir():
        skip_external(f"TFLite Micro sources {THIRD_PARTY} are absent (../shared/third_party is only present in CI)")
    require_tools("arm-none-eabi-g++", "qemu-system-arm")
    monkeypatch.setenv("HARNESS_TFLM_ROOT", str(THIRD_PARTY))
    return THIRD_PARTY


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run `make test`, which installs them)")
