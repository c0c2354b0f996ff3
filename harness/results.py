"""The results store: append-only JSON lines, one file per kind of record (bench.jsonl, accuracy.jsonl, …).

A record is written, flushed and fsynced the moment it exists, under an exclusive lock, so parallel runs
(nightly --jobs) interleave whole lines and a crash loses at most the record being measured.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import __version__

SCHEMA_VERSION = 1
DEFAULT_DIR = Path("results")


def results_dir(path: str | Path | None = None) -> Path:
    """The store's folder: the argument, else $HARNESS_RESULTS, else ./results."""
    return Path(path or os.environ.get("HARNESS_RESULTS") or DEFAULT_DIR)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def git_sha() -> str | None:
    """The harness checkout's commit, when it is one (results say which code measured them)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def append(kind: str, record: dict[str, Any], directory: str | Path | None = None) -> dict[str, Any]:
    """Stamp `record` (schema, time, versions) and append it to <dir>/<kind>.jsonl durably."""
    full = {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "harness": __version__,
        "git_sha": git_sha(),
        **record,
    }
    d = results_dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    line = json.dumps(full, sort_keys=True, default=_jsonable) + "\n"
    with open(d / f"{kind}.jsonl", "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return full


def read(kind: str, directory: str | Path | None = None) -> Iterator[dict[str, Any]]:
    """Every record of a kind, oldest first. A torn last line (a crash mid-write) is skipped, not fatal."""
    path = results_dir(directory) / f"{kind}.jsonl"
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths: whatever a measurement naturally produces."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a result")
