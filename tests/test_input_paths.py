"""Inputs by each target's fastest path (semihosting on QEMU) and by the UART, the protocol of record:
the same runs give the same figures byte for byte, whichever path carried the inputs."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tools

from harness import protocol as P
from harness.accuracy import load_samples, run_accuracy
from harness.bench import prepare
from harness.boards import get_board
from harness.errors import TargetError
from harness.targets.qemu import QemuSession
from harness.zoo import resolve_model

pytestmark = pytest.mark.qemu
F746 = get_board("nucleo-f746")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    return prepare(F746, resolve_model("digits_cnn")[0], "qemu", build_dir=str(tmp_path_factory.mktemp("b")))


def test_the_same_accuracy_run_through_each_path_gives_the_same_figures(tmp_path, digits):
    reports, records = {}, {}
    for path in ("auto", "uart"):
        rep = run_accuracy(F746, digits.graph, "digits", target="qemu", limit=40, results_dir=tmp_path / path,
                           engine=digits, progress=False, input_path=path)  # fmt: skip
        reports[path] = rep
        records[path] = load_samples(tmp_path / path / "reports" / rep["run_id"] / "samples.jsonl")
    assert reports["auto"]["throughput"]["input_path"] == "semihosting"
    assert reports["uart"]["throughput"]["input_path"] == "uart"
    assert all(r["throughput"]["input_bytes_per_s"] > 0 for r in reports.values())
    figures = {path: json.dumps(rep["figures"], sort_keys=True) for path, rep in reports.items()}
    assert figures["auto"] == figures["uart"]
    assert records["auto"] == records["uart"] and len(records["auto"]) == 40  # outputs and counts, sample by sample


def test_a_bench_through_each_path_gives_the_same_counts_stack_and_arena(digits):
    xs = [np.random.default_rng(k).integers(-128, 128, (1, 8, 8, 1), dtype=np.int8) for k in range(3)]
    got = {}
    for path in ("auto", "uart"):
        with digits.open(30.0, path) as runner:
            runs = [runner.run([x], repetitions=3, warmup=1) for x in xs]
            got[path] = [([o.tolist() for o in outs], s.counts, s.peak_stack, s.arena_high_water) for outs, s in runs]
            assert runner.input_path == ("semihosting" if path == "auto" else "uart") and runner.input_bytes == 3 * 64
    assert got["auto"] == got["uart"]


def test_load_input_refuses_what_it_cannot_read(digits, tmp_path):
    with digits.open(30.0) as runner:
        dev = runner.session.device
        # nothing named yet: this session's first load names the file
        with pytest.raises(P.Refused, match="no file named yet"):
            dev.load_input(0, 0)
        with pytest.raises(P.Refused, match="file missing or short"):
            dev.load_input(0, 0, str(tmp_path / "absent.bin"))
        (tmp_path / "short.bin").write_bytes(bytes(63))
        with pytest.raises(P.Refused, match="file missing or short"):
            dev.load_input(0, 0, str(tmp_path / "short.bin"))
        with pytest.raises(P.Refused, match="file missing or short"):
            dev.load_input(0, 1)  # the kept path, read past its end
        with pytest.raises(P.Refused, match="bad index"):
            dev.request(P.LOAD_INPUT, struct.pack("<BI", 1, 0), P.ACK)
        # and it still serves, by either path
        x = np.arange(-32, 32, dtype=np.int8).reshape(1, 8, 8, 1)
        outs, _ = runner.run([x])
        runner.session.input_path = "uart"
        assert [o.tolist() for o in runner.run([x])[0]] == [o.tolist() for o in outs]


def test_firmware_that_refuses_load_input_falls_back_to_the_uart():
    class OldFirmware:
        def __init__(self):
            self.sent = []

        def load_input(self, index, offset, path=None):
            raise P.Refused(P.ERR_BAD_REQUEST, "device refused the request: unknown request")

        def set_input(self, index, data):
            self.sent.append((index, data))

    session = QemuSession.__new__(QemuSession)  # the staging half only: no QEMU process needed
    session._stage = Path(tempfile.mkdtemp())
    session._stage_file, session._staged, session.input_path = session._stage / "inputs.bin", False, "semihosting"
    session.hello = P.Hello(2, 1, 0, 0, 0, "b", "c", "s", "id", "m", inputs=[P.TensorSpec(0, 4, 1.0, 0, (4,))])
    session.device = OldFirmware()
    session.put_input(0, b"abcd")
    assert session.input_path == "uart" and session.device.sent == [(0, b"abcd")]


def test_a_batch_run_from_staged_files_equals_one_inference_at_a_time(digits):
    """RUN_STAGED (the accuracy run's batches on QEMU) against INFER over the UART, sample by sample: the
    same outputs and counts, the same peak stack and arena high water."""
    xs = [np.random.default_rng(10 + k).integers(-128, 128, (1, 8, 8, 1), dtype=np.int8) for k in range(5)]
    with digits.open(30.0, "uart") as runner:
        one = [runner.run([x]) for x in xs]
        assert runner.run_batch([[x] for x in xs]) is None  # the UART path has no batch
    with digits.open(30.0) as runner:
        batch = runner.run_batch([[x] for x in xs])
    assert [[o.tolist() for o in outs] for outs, _ in batch] == [[o.tolist() for o in outs] for outs, _ in one]
    assert [(s.counts, s.peak_stack, s.arena_high_water) for _, s in batch] == [
        (s.counts, s.peak_stack, s.arena_high_water) for _, s in one
    ]


def test_run_staged_refuses_what_it_cannot_read(digits, tmp_path):
    with digits.open(30.0) as runner:
        dev = runner.session.device
        with pytest.raises(P.Refused, match="cannot open the staging files"):
            dev.run_staged(0, 2, str(tmp_path / "absent.bin"), str(tmp_path / "out.bin"))
        (tmp_path / "three.bin").write_bytes(bytes(3 * 64))
        with pytest.raises(P.Refused, match="a staging file is short") as e:
            dev.run_staged(1, 4, str(tmp_path / "three.bin"), str(tmp_path / "out.bin"))
        assert "(code 3, 2, 4" in str(e.value)  # samples 1 and 2 ran, of 4
        assert len((tmp_path / "out.bin").read_bytes()) == 2 * (10 + 8)  # their outputs and counts
        with pytest.raises(P.Refused, match="RUN_STAGED: bad request"):
            dev.request(P.RUN_STAGED, struct.pack("<IHB", 0, 1, 9) + b"only/in/a", P.RAN)
        assert dev.run_staged(0, 3, str(tmp_path / "three.bin"), str(tmp_path / "out.bin"))[0] == 3


def test_a_repeated_run_staged_gets_the_kept_answer_without_running_again(digits, tmp_path):
    """A RUN_STAGED sent again (its answer late or lost) is answered with the first run's RAN at once: the
    batch is not run again, so the out file the host may be reading is not rewritten."""
    with digits.open(30.0) as runner:
        dev = runner.session.device
        (tmp_path / "in.bin").write_bytes(bytes(range(64)) * 3)
        out = tmp_path / "out.bin"
        a, b = str(tmp_path / "in.bin").encode(), str(out).encode()
        frame = P.encode(P.RUN_STAGED, 200, struct.pack("<IHB", 0, 3, len(a)) + a + b)
        dev.port.write(frame + frame)
        answers = [dev.read_frame(10.0) for _ in range(3)]
        assert [(f.kind, f.seq) for f in answers] == [(P.ACK, 200), (P.RAN, 200), (P.RAN, 200)]
        assert answers[1].payload == answers[2].payload and struct.unpack("<I", answers[1].payload[:4]) == (3,)
        with pytest.raises(TargetError):
            dev.read_frame(0.5)  # and nothing more: no second run's acknowledgement
        assert len(out.read_bytes()) == 3 * (10 + 8)
        # another RUN_STAGED (a new sequence number) runs
        assert dev.run_staged(1, 2, str(tmp_path / "in.bin"), str(out))[0] == 2
