"""STM32 clock trees. Every Nucleo's firmware builds with its clock setup; the clock code itself is compiled for
this machine against a simulated register file (tests/fixtures/clock_sim/sim.c) and the registers it leaves
behind are decoded here, independently of the C, into frequencies that must equal boards.toml's clocks and stay
inside the reference manuals' limits (VCO ranges, bus maxima, flash wait states). A board whose clock input is
missing must fall back to its reset clock, and the netduinoplus2 run shows that fallback on QEMU too."""

from __future__ import annotations

import math
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import require_tools

from harness.boards import get_board, load_boards
from harness.build import board_config, build_firmware, clock_setup_for, firmware_sources

REPO = Path(__file__).resolve().parent.parent
STUB = Path(__file__).parent / "fixtures" / "stub_model"
NUCLEOS = [b.name for b in load_boards().values() if not b.is_qemu]
HSE = 8_000_000  # the ST-LINK's MCO on OSC_IN
HSI16 = 16_000_000


def run_sim(board_name: str, tmp_path: Path, no_hse: bool = False) -> tuple[int, int, dict[int, int]]:
    require_tools("gcc")
    board = get_board(board_name)
    (tmp_path / "board_config.h").write_text(board_config(board, qemu=False, build_id="sim"))
    (tmp_path / "prelude.h").write_text(
        "#include <stdint.h>\nvolatile uint32_t *sim_reg(uint32_t addr);\n"
        "#define REG32(a) (*sim_reg(a))\n#define BARRIER(x) ((void)0)\n"
    )
    exe = tmp_path / "sim"
    cmd = ["gcc", "-O1", "-Wall", "-Werror", "-include", str(tmp_path / "prelude.h"), f"-I{tmp_path}"]
    cmd += [f"-I{REPO / 'firmware' / 'boards'}", "-include", str(tmp_path / "board_config.h")]
    cmd += ["-DSIM_NO_HSE"] if no_hse else []
    cmd += [str(REPO / "firmware/boards/clock_stm32.c"), str(REPO / "tests/fixtures/clock_sim/sim.c"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout.split("\n")
    core = int(lines[0].split()[1])
    uart = int(lines[1].split()[1])
    regs = {int(a, 16): int(v, 16) for a, v in (ln.split() for ln in lines[2:] if ln)}
    return core, uart, regs


def div_apb(code: int) -> int:
    return 1 if code < 4 else 2 ** (code - 3)


def div_ahb(code: int) -> int:
    return 1 if code < 8 else [2, 4, 8, 16, 64, 128, 256, 512][code - 8]


def test_every_nucleo_builds_with_its_clock_setup(tmp_path):
    require_tools("arm-none-eabi-gcc")
    for name in NUCLEOS:
        board = get_board(name)
        assert clock_setup_for(board, qemu=False) and not clock_setup_for(board, qemu=True)
        assert "clock_stm32.c" in [p.name for p in firmware_sources(board, qemu=False)]
        cfg = board_config(board, qemu=False, build_id="x")
        assert f"#define BOARD_CLOCK_HZ {board.clock_hz}u" in cfg
        assert f"#define BOARD_RESET_CLOCK_HZ {board.reset_clock_hz}u" in cfg
        build = build_firmware(STUB, board, qemu=False, cache_dir=tmp_path, extra_cflags=("-Werror",))
        assert build.elf.is_file() and not build.qemu


def test_f746_at_216_mhz(tmp_path):
    core, uart, r = run_sim("nucleo-f746", tmp_path)
    cr, pll, cfgr = r[0x40023800], r[0x40023804], r[0x40023808]
    assert cr & (1 << 18) and cr & (1 << 16)  # HSE in bypass: the MCO, no crystal
    m, n, p = pll & 0x3F, (pll >> 6) & 0x1FF, 2 * (((pll >> 16) & 3) + 1)
    assert pll & (1 << 22)  # PLL from HSE
    assert 1e6 <= HSE / m <= 2e6 and 100e6 <= HSE / m * n <= 432e6  # RM0385: VCO input and output ranges
    sysclk = HSE // m * n // p
    q = (pll >> 24) & 0xF
    assert HSE / m * n / q == 48e6  # USB clock exact (unused here, but a valid configuration)
    assert cfgr & 3 == 2 and sysclk == get_board("nucleo-f746").clock_hz == core
    hclk = sysclk // div_ahb((cfgr >> 4) & 0xF)
    apb1, apb2 = hclk // div_apb((cfgr >> 10) & 7), hclk // div_apb((cfgr >> 13) & 7)
    assert apb1 <= 54e6 and apb2 <= 108e6 and uart == apb1
    acr = r[0x40023C00]
    assert acr & 0xF == math.ceil(hclk / 30e6) - 1 == 7  # RM0385 table 5 at 2.7-3.6 V: 30 MHz per wait state
    assert acr & (1 << 8) and acr & (1 << 9)  # prefetch, ART
    assert (r[0x40007000] >> 14) & 3 == 3 and r[0x40007000] & (3 << 16) == 3 << 16  # scale 1, ODEN + ODSWEN
    assert r[0xE000ED14] & (3 << 16) == 3 << 16  # I- and D-cache on


def test_f412_at_100_mhz(tmp_path):
    core, uart, r = run_sim("nucleo-f412", tmp_path)
    pll, cfgr = r[0x40023804], r[0x40023808]
    m, n, p = pll & 0x3F, (pll >> 6) & 0x1FF, 2 * (((pll >> 16) & 3) + 1)
    assert 1e6 <= HSE / m <= 2e6 and 100e6 <= HSE / m * n <= 432e6
    assert (pll >> 28) == 0  # bits 31:28 kept at the sim's reset value (0): never written
    sysclk = HSE // m * n // p
    assert cfgr & 3 == 2 and sysclk == 100_000_000 == core
    apb1 = sysclk // div_apb((cfgr >> 10) & 7)
    assert apb1 <= 50e6 and sysclk // div_apb((cfgr >> 13) & 7) <= 100e6 and uart == apb1
    assert r[0x40023C00] & 0xF == 3  # RM0402: 90 < HCLK <= 100 MHz at 2.7-3.6 V
    assert (r[0x40007000] >> 14) & 3 == 3  # scale 1
    assert 0xE000ED14 not in r  # the M4 has no caches to switch


def test_h743_at_400_mhz(tmp_path):
    core, uart, r = run_sim("nucleo-h743", tmp_path)
    sel, cfg, divr = r[0x58024428], r[0x5802442C], r[0x58024430]
    assert sel & 3 == 2  # PLL source HSE
    m = (sel >> 4) & 0x3F
    ref = HSE / m
    assert (cfg >> 2) & 3 == 1 and 2e6 <= ref <= 4e6  # PLL1RGE matches the reference
    assert not cfg & 2 and not cfg & 1  # wide VCO, integer mode
    n, p = (divr & 0x1FF) + 1, ((divr >> 9) & 0x7F) + 1
    assert 192e6 <= ref * n <= 836e6 and p % 2 == 0  # RM0433: wide VCO range; DIVP1 even
    sysclk = int(ref * n / p)
    d1, d2, d3 = r[0x58024418], r[0x5802441C], r[0x58024420]
    cpu = sysclk // div_ahb((d1 >> 8) & 0xF)
    hclk = cpu // div_ahb(d1 & 0xF)
    assert cpu == 400_000_000 == core == get_board("nucleo-h743").clock_hz
    assert hclk <= 200e6  # AXI/AHB limit at VOS1
    for pclk in (hclk // div_apb((d1 >> 4) & 7), hclk // div_apb((d2 >> 4) & 7), hclk // div_apb((d2 >> 8) & 7)):
        assert pclk <= 100e6
    assert hclk // div_apb((d3 >> 4) & 7) <= 100e6
    assert uart == hclk // div_apb((d2 >> 4) & 7)  # USART3 on rcc_pclk1
    assert r[0x58024410] & 7 == 3  # SW = PLL1
    acr = r[0x52002000]
    assert acr & 0xF == 2 and (acr >> 4) & 3 == 2  # RM0433 table 17: VOS1, 185-210 MHz AXI
    assert r[0x5802480C] & 7 == 2  # LDOEN, no bypass, SCUEN cleared by the write
    assert (r[0x58024818] >> 14) & 3 == 3  # VOS1
    assert r[0xE000ED14] & (3 << 16) == 3 << 16


def test_l4r5_at_120_mhz(tmp_path):
    core, uart, r = run_sim("nucleo-l4r5", tmp_path)
    pll, cfgr = r[0x4002100C], r[0x40021008]
    assert pll & 3 == 2 and pll & (1 << 24)  # HSI16, PLLR output enabled
    m, n, rdiv = ((pll >> 4) & 0xF) + 1, (pll >> 8) & 0x7F, 2 * (((pll >> 25) & 3) + 1)
    assert 2.66e6 <= HSI16 / m <= 16e6 and 64e6 <= HSI16 / m * n <= 344e6  # RM0432 PLL ranges
    sysclk = HSI16 // m * n // rdiv
    assert cfgr & 3 == 3 and (cfgr >> 4) & 0xF == 0  # SW = PLL, AHB back to /1 after the boost step
    assert sysclk == 120_000_000 == core and uart == sysclk // div_apb((cfgr >> 8) & 7)
    assert r[0x40022000] & 0xF == math.ceil(sysclk / 20e6) - 1 == 5  # range 1 boost: 20 MHz per wait state
    assert (r[0x40007000] >> 9) & 3 == 1 and not r[0x40007080] & (1 << 8)  # range 1, R1MODE = 0 (boost)


@pytest.mark.parametrize("name", ["nucleo-f746", "nucleo-f412", "nucleo-h743"])
def test_no_clock_input_falls_back_to_the_reset_clock(name, tmp_path):
    core, uart, r = run_sim(name, tmp_path, no_hse=True)
    board = get_board(name)
    assert core == uart == board.reset_clock_hz  # what HELLO then reports, and the host rejects
    cfgr = r.get(0x58024410 if "h743" in name else 0x40023808, 0)
    assert cfgr & 3 == 0  # still on HSI


@pytest.mark.qemu
def test_the_fallback_runs_on_qemu_netduinoplus2(tmp_path):
    # QEMU's STM32F405 does not model the RCC (reads 0): the F4 clock setup must time out, fall back, and
    # still bring the USART up at the reset clock, answering HELLO.
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from harness.targets.qemu import QemuTarget

    board = replace(get_board("netduinoplus2"), clock_setup=True, reset_clock_hz=16_000_000)
    build = build_firmware(STUB, board, qemu=True, cache_dir=tmp_path)
    with QemuTarget(board).open(build, timeout=10) as s:
        assert s.hello.clock_hz == 16_000_000 != board.clock_hz
        s.device.set_input(0, bytes(1000))
        assert s.device.infer(1).counts[0] > 0
        assert s.device.get_output(0, 1000) == bytes([1]) * 1000  # the stub model: input + 1
