"""Firmware builds: every board in boards.toml links (on the board and on its QEMU fallback), a model too
big for a board fails with the bytes it needs and the bytes the board has, and the cache is keyed right."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require_tools

from harness.boards import load_boards
from harness.build import build_firmware, section_sizes
from harness.errors import BuildError, DoesNotFitError

STUB = Path(__file__).parent / "fixtures" / "stub_model"
BOARDS = load_boards()


@pytest.fixture(autouse=True)
def _toolchain():
    require_tools("arm-none-eabi-gcc")


def _variants():
    for name, board in sorted(BOARDS.items()):
        yield pytest.param(board, True, id=f"{name}-qemu")
        if not board.is_qemu:
            yield pytest.param(board, False, id=f"{name}-hw")


@pytest.mark.parametrize("board,qemu", list(_variants()))
def test_every_board_builds_and_links(board, qemu, tmp_path):
    b = build_firmware(STUB, board, qemu=qemu, cache_dir=tmp_path)
    assert b.elf.is_file() and b.map_file.is_file() and not b.cached
    sizes = section_sizes(b.elf)
    # the arena is the model's, the stack gets what is left of the board's SRAM (not the QEMU machine's)
    assert b.arena == sizes[".arena"] >= 2048
    assert b.sram_total == board.ram_bytes and b.flash_total == board.flash_bytes
    assert b.stack == board.ram_bytes - (b.data + b.bss + b.arena + b.harness) >= 8 * 1024
    assert 0 < b.flash_bytes < board.flash_bytes
    # the image (vector table first) loads at the flash origin the board, or its QEMU machine, boots from
    from elftools.elf.elffile import ELFFile

    with open(b.elf, "rb") as f:
        loads = [s["p_paddr"] for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD" and s["p_filesz"]]
    assert min(loads) == (board.qemu_machine if qemu else board).flash_origin


def test_a_model_too_big_for_the_board_names_both_sizes(tmp_path):
    f412 = BOARDS["nucleo-f412"]  # 256 KiB SRAM: the stub's 300,000-byte arena cannot fit
    for qemu in (False, True):
        with pytest.raises(DoesNotFitError) as e:
            build_firmware(STUB, f412, qemu=qemu, extra_cflags=("-DSTUB_MODE=3",), cache_dir=tmp_path)
        msg = str(e.value)
        assert f"the board has {f412.ram_bytes:,}" in msg and "SRAM" in msg
        needed = int(msg.split("it needs ")[1].split(" bytes")[0].replace(",", ""))
        assert needed > 300_000 + 8 * 1024  # the arena and the stack reserve at least
        assert ("QEMU fallback" in msg) == qemu
    # the same arena fits the H743's 512 KiB
    assert build_firmware(STUB, BOARDS["nucleo-h743"], qemu=True, extra_cflags=("-DSTUB_MODE=3",), cache_dir=tmp_path)


def test_the_cache_hits_and_misses_when_it_should(tmp_path):
    board = BOARDS["qemu-m4"]
    first = build_firmware(STUB, board, qemu=True, cache_dir=tmp_path)
    again = build_firmware(STUB, board, qemu=True, cache_dir=tmp_path)
    assert again.cached and again.elf == first.elf and again.build_id == first.build_id
    other_opt = build_firmware(STUB, board, qemu=True, opt="-O0", cache_dir=tmp_path)
    assert not other_opt.cached and other_opt.build_id != first.build_id
    model = tmp_path / "model"
    model.mkdir()
    for p in STUB.iterdir():
        (model / p.name).write_text(p.read_text())
    (model / "model.c").write_text((model / "model.c").read_text().replace("+ 1u", "+ 2u"))
    changed = build_firmware(model, board, qemu=True, cache_dir=tmp_path)
    assert not changed.cached and changed.build_id != first.build_id


def test_bad_options_and_missing_model_are_clear_errors(tmp_path):
    board = BOARDS["qemu-m4"]
    with pytest.raises(BuildError, match="optimisation flag"):
        build_firmware(STUB, board, qemu=True, opt="-O9", cache_dir=tmp_path)
    with pytest.raises(BuildError, match="no generated model.h"):
        build_firmware(tmp_path, board, qemu=True, cache_dir=tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.h").write_text((STUB / "model.h").read_text())
    (broken / "model.c").write_text("this is not C;\n")
    with pytest.raises(BuildError, match="failed"):
        build_firmware(broken, board, qemu=True, cache_dir=tmp_path)


def test_wide_weights_that_overflow_the_flash_give_way_until_the_model_links(tmp_path, monkeypatch):
    """Widening weights is bought with flash on an estimate of the rest (code, tables, depthwise packing):
    where the linker says the estimate overspent, the generator gives back the overflow and builds again,
    and the next build of the model starts from the budget it learned. mlperf_ad on a board of 540 KiB
    flash with every layer widened overflows; with fewer wide layers it fits."""
    require_tools("arm-none-eabi-gcc")
    import dataclasses

    from harness import bench, zoo
    from harness.engines import native

    board = dataclasses.replace(BOARDS["nucleo-f746"], flash_bytes=540 * 1024)
    monkeypatch.setattr(native, "wide_budget", lambda flash, graph: 10**9)  # an estimate that overspends
    steps: list[str] = []
    eng = bench.prepare(board, zoo.resolve_model("mlperf_ad")[0], target="qemu", build_dir=str(tmp_path),
                        step=lambda what, *_a, **_k: steps.append(what))  # fmt: skip
    over = [s for s in steps if "over the board's flash" in s]
    assert over and steps.count("building firmware") == len(over) + 1
    sizes = section_sizes(eng.build.elf)
    assert sizes[".text"] + sizes[".rodata"] + sizes.get(".data", 0) <= board.flash_bytes
    assert 0 < eng.spec.host.wide_bytes  # some layers kept their wide weights
    learned = list(tmp_path.glob(f"*/wide-budget-{board.flash_bytes}"))
    assert len(learned) == 1 and int(learned[0].read_text()) < 10**9
    steps.clear()  # the next build starts from what was learned: no failed link first
    bench.prepare(board, zoo.resolve_model("mlperf_ad")[0], target="qemu", build_dir=str(tmp_path),
                  step=lambda what, *_a, **_k: steps.append(what))  # fmt: skip
    assert not [s for s in steps if "over the board's flash" in s]
