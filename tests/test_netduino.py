"""QEMU's netduinoplus2 (STM32F405) as a board: the STM32 USART driver that drives a Nucleo's ST-LINK virtual
COM port runs for real, end to end through the protocol, with a generated model checked against the reference."""

from __future__ import annotations

import pytest
from conftest import require_tools

from harness.boards import get_board
from harness.build import board_config, firmware_sources


def test_netduinoplus2_is_an_stm32_usart_board():
    b = get_board("netduinoplus2")
    assert b.is_qemu and b.machine == "netduinoplus2" and b.family == "stm32f4"
    assert b.uart.kind == "stm32-usart" and b.uart.base == 0x40011000
    assert b.clock_setup is False  # its RCC reads 0: polling ready bits would hang
    assert [p.name for p in firmware_sources(b, qemu=True)][:2] == ["cortexm.c", "uart_stm32.c"]
    cfg = board_config(b, qemu=True, build_id="x")
    assert "#define STM32_UART_LAYOUT_SR_DR 1" in cfg  # the F4's SR/DR register layout
    assert "#define RCC_UART_EN_REG 0x40023844u" in cfg and "#define RCC_UART_EN_BIT 4" in cfg  # APB2ENR.USART1EN
    assert "#define UART_BASE 0x40011000u" in cfg and "#define BOARD_QEMU 1" in cfg
    assert "#define BOARD_CLOCK_SETUP 0" in cfg and "clock_stm32.c" not in str(firmware_sources(b, qemu=True))


@pytest.mark.qemu
def test_a_generated_model_end_to_end_through_the_stm32_usart(tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from harness.bench import BenchOptions, run_bench

    opts = BenchOptions(
        board="netduinoplus2",
        model="digits_cnn",
        target="qemu",
        repetitions=2,
        inputs=2,
        results_dir=str(tmp_path / "results"),
        build_dir=str(tmp_path / "build"),
    )
    record = run_bench(opts)
    assert record["status"] == "ok" and record["outputs_match"] is True
    f = record["figures"]
    assert f["count_source"] == "qemu-icount" and f["count_unit"] == "instructions"
    c = f["count"]
    assert 0 < c["min"] and c["max"] - c["min"] < 0.01 * c["median"]  # repeatable under icount
    assert f["fits"]
    assert "netduinoplus2" in record["target_desc"]
