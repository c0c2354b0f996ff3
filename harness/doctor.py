"""`harness doctor`: what this machine has for building, emulating and flashing, and the command that installs
whatever is missing. Nothing here changes the machine."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.boards import load_boards
from harness.errors import TargetError

APT_GCC = "sudo apt install gcc-arm-none-eabi libnewlib-arm-none-eabi"
APT_QEMU = "sudo apt install qemu-system-arm"
APT_CXX = "sudo apt install libstdc++-arm-none-eabi-newlib"


@dataclass
class Check:
    area: str  # toolchain | tflm | qemu | pyocd | target | probe | serial
    name: str
    ok: bool
    detail: str
    fix: str = ""  # the command (or step) that installs or repairs it
    required: bool = True  # a missing optional item (a pack, a probe) does not fail the doctor

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def check_toolchain() -> list[Check]:
    out = _run(["arm-none-eabi-gcc", "--version"])
    checks = [
        Check("toolchain", "arm-none-eabi-gcc", out is not None, out.splitlines()[0] if out else "not found", APT_GCC)
    ]
    lib = _run(["arm-none-eabi-gcc", "-print-file-name=libc_nano.a"])
    path = Path(lib.strip()) if lib else None
    has = path is not None and path.is_absolute() and path.is_file()
    where = str(path.resolve()) if has else "libc_nano.a not found"
    checks.append(Check("toolchain", "newlib (nano)", has, where, APT_GCC))
    return checks


def check_tflm() -> list[Check]:
    """What the TFLM engines need beyond the native one: C++ for the cross compiler, and TFLM's sources.
    Optional: the native engine runs without them."""
    from harness.engines import tflm
    from harness.errors import HarnessError

    cxx = shutil.which("arm-none-eabi-g++") is not None
    if cxx:
        p = subprocess.run(["arm-none-eabi-g++", "-x", "c++", "-fsyntax-only", "-"], input="#include <new>\n",
                           capture_output=True, text=True, timeout=20)  # fmt: skip
        cxx = p.returncode == 0
    checks = [
        Check("tflm", "arm-none-eabi-g++ with libstdc++", cxx,
              "C++ headers and libraries found" if cxx else "C++ for the cross compiler not found (TFLM engines)",
              APT_CXX, required=False),
    ]  # fmt: skip
    try:
        root, ok = f"at {tflm.sources_root()}", True
    except HarnessError:
        root, ok = "absent (tflm-cmsis, tflm-ref need them)", False
    checks.append(Check("tflm", "TFLite Micro sources", ok, root, "harness engines fetch tflm", required=False))
    return checks


def check_qemu() -> list[Check]:
    out = _run(["qemu-system-arm", "--version"])
    checks = [Check("qemu", "qemu-system-arm", out is not None, out.splitlines()[0] if out else "not found", APT_QEMU)]
    if out is not None:
        machines = _run(["qemu-system-arm", "-M", "help"]) or ""
        known = {line.split()[0] for line in machines.splitlines()[1:] if line.strip()}
        for b in load_boards().values():
            if b.is_qemu:
                checks.append(
                    Check(
                        "qemu",
                        f"machine {b.machine}",
                        b.machine in known,
                        f"for {b.name}; inputs by semihosting (the UART where refused)"
                        if b.machine in known
                        else f"this QEMU lacks {b.machine} (used by {b.name})",
                        "install QEMU >= 7.2 (" + APT_QEMU + ")",
                    )
                )
    return checks


def check_pyocd() -> list[Check]:
    try:
        import pyocd
    except ImportError:
        return [Check("pyocd", "pyOCD", False, "not installed", "pip install pyocd")]
    from harness.targets.pyocd import target_support

    checks = [Check("pyocd", "pyOCD", True, f"version {pyocd.__version__}")]
    try:
        from pyocd.target.pack.pack_target import ManagedPacks

        packs = [p.get_pack_name() for p in ManagedPacks.get_installed_packs()]
    except Exception as e:  # no pack cache yet
        packs = []
        checks.append(Check("pyocd", "pack cache", True, f"unreadable ({e}): no packs installed", required=False))
    checks.append(Check("pyocd", "installed packs", True, ", ".join(packs) or "none", required=False))
    for b in load_boards().values():
        if b.is_qemu:
            continue
        ok, how = target_support(b)
        checks.append(
            Check(
                "target",
                f"{b.name} ({b.pyocd_target})",
                ok,
                how if ok else how.split(":")[0],
                ""
                if ok
                else f"pyocd pack install {(b.chip or b.pyocd_target).lower()} (then re-run the doctor: "
                f'offline it installs nothing), or pack = "path/to/{b.pyocd_pack or "DFP"}.x.y.z.pack" in boards.toml',
                required=False,  # only the board one owns matters
            )
        )
    return checks


def check_probes() -> list[Check]:
    from harness.probes import list_probes

    try:
        probes = list_probes()
    except TargetError as e:
        return [
            Check(
                "probe",
                "USB probes",
                False,
                str(e),
                "install the ST-LINK udev rules (docs/real-boards.md) and re-plug the board",
                required=False,
            )
        ]
    if not probes:
        return [
            Check(
                "probe",
                "debug probes",
                True,
                "none attached: benches run on each board's QEMU fallback, inputs by semihosting",
                required=False,
            )
        ]
    return [
        Check(
            "probe",
            p.unique_id,
            bool(p.board),
            f"{p.description}; board {p.board or 'unknown (' + (p.board_name or p.board_id or '?') + ')'}; "
            f"serial {p.serial_port or 'none found'}; inputs by SWD (the UART if a write fails)",
            "" if p.board else "add its board to boards.toml (board_id) or pass --board and --probe",
            required=False,
        )
        for p in probes
    ]


def check_serial() -> list[Check]:
    from harness.probes import serial_ports

    ports = [p for p in serial_ports() if getattr(p, "vid", None) is not None]  # USB: where a board's VCP is
    if not ports:
        return [Check("serial", "USB serial ports", True, "none", required=False)]
    return [
        Check("serial", p.device, True, f"{p.description or ''} SER={p.serial_number or '-'}".strip(), required=False)
        for p in ports
    ]


def run_doctor() -> list[Check]:
    return check_toolchain() + check_tflm() + check_qemu() + check_pyocd() + check_probes() + check_serial()


def healthy(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)
