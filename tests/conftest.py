"""Shared fixtures. The reference models live outside the repo (../shared/models): tests that need them
skip, saying why, where that folder is absent, and run in CI, where it is present."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
        pytest.skip(f"reference model {path} is absent (../shared/models is only present in CI)")
    return path


@pytest.fixture(params=sorted(SHARED_MODEL_FILES))
def shared_model_path(request) -> Path:
    return shared_model(request.param)


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run `make test`, which installs them)")
