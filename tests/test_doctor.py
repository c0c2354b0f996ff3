"""`harness doctor` and `harness probes` on this machine (toolchain, QEMU and pyOCD are real here; probes are
faked only at the pyOCD API boundary, since none is attached)."""

from __future__ import annotations

import json

from conftest import require_tools, skip_external

from harness import doctor
from harness.cli import main


def by_name(checks):
    return {c.name: c for c in checks}


def test_doctor_on_this_machine(capsys):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    checks = by_name(doctor.run_doctor())
    assert checks["arm-none-eabi-gcc"].ok and checks["newlib (nano)"].ok and checks["qemu-system-arm"].ok
    assert checks["machine netduinoplus2"].ok and checks["machine mps2-an500"].ok
    assert "inputs by semihosting" in checks["machine mps2-an500"].detail  # the bulk-input path it gets
    assert checks["pyOCD"].ok and checks["pyOCD"].detail.startswith("version ")
    assert checks["arm-none-eabi-g++ with libstdc++"].ok  # make installs it
    sources = checks["TFLite Micro sources"]
    assert not sources.required and sources.fix == "harness engines fetch tflm"
    assert checks["nucleo-f412 (stm32f412xg)"].ok  # built into pyOCD
    f746 = checks["nucleo-f746 (stm32f746zgtx)"]
    if not f746.ok:  # no pack installed: the fix names the command, and the caveat about offline installs
        assert "pyocd pack install stm32f746zg" in f746.fix and "Keil.STM32F7xx_DFP" in f746.fix
        assert not f746.required
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["healthy"] is True and any(c["area"] == "probe" for c in data["checks"])


def test_missing_tools_are_named_with_their_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no cross compiler, no QEMU
    checks = by_name(doctor.run_doctor())
    gcc, qemu = checks["arm-none-eabi-gcc"], checks["qemu-system-arm"]
    assert not gcc.ok and "apt install gcc-arm-none-eabi libnewlib-arm-none-eabi" in gcc.fix
    assert not qemu.ok and "apt install qemu-system-arm" in qemu.fix
    assert not doctor.healthy(list(checks.values()))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "required tools are missing" in out


def test_probes_command_lists_probe_board_and_port(monkeypatch, capsys):
    from serial.tools.list_ports_common import ListPortInfo
    from test_pyocd import UID, FakeProbe, FakePyocd

    FakePyocd(probes=[FakeProbe(UID, board_id="0816", name="NUCLEO-F746ZG")]).install(monkeypatch)
    port = ListPortInfo("/dev/ttyACM0")
    port.serial_number = UID
    monkeypatch.setattr("harness.probes.serial_ports", lambda: [port])
    assert main(["probes", "--json"]) == 0
    (p,) = json.loads(capsys.readouterr().out)
    assert p["unique_id"] == UID and p["board"] == "nucleo-f746" and p["serial_port"] == "/dev/ttyACM0"
    assert p["board_id"] == "0816"
    assert main(["probes"]) == 0
    assert "nucleo-f746" in capsys.readouterr().out
    checks = doctor.check_probes()
    assert checks[0].ok and "board nucleo-f746" in checks[0].detail and "/dev/ttyACM0" in checks[0].detail
    assert "inputs by SWD" in checks[0].detail


def test_no_probes(capsys):
    from harness.probes import connected_probes

    if connected_probes():
        skip_external("a probe is attached to this machine")
    assert main(["probes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # none attached to this machine
