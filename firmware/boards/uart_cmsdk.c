/* ARM CMSDK APB UART (MPS2 / MPS3 FPGA images, as QEMU models them). */
#include <stdint.h>

#include "board.h"
#include "board_config.h"

#define UART_DATA (*(volatile uint32_t *)(UART_BASE + 0x00u))
#define UART_STATE (*(volatile uint32_t *)(UART_BASE + 0x04u))
#define UART_CTRL (*(volatile uint32_t *)(UART_BASE + 0x08u))
#define UART_INTSTATUS (*(volatile uint32_t *)(UART_BASE + 0x0Cu))
#define UART_BAUDDIV (*(volatile uint32_t *)(UART_BASE + 0x10u))
#define NVIC_ISER0 (*(volatile uint32_t *)0xE000E100u)
#define NVIC_ICPR0 (*(volatile uint32_t *)0xE000E280u)
#define CTRL_RX_INT (1u << 3)

/* Where the machine wires the RX interrupt (boards.toml: uart.rx_irq), the receive sleeps in WFI until a
 * byte comes: QEMU then idles instead of spinning a host core on the status register, and that core
 * goes to the harness. Without it, the receive polls. The interrupt is armed only while the receive
 * sleeps, and its handler never runs: a byte that comes during an inference (a request sent again on a
 * noisy link) must not push an exception frame onto the inference's stack or add its instructions to
 * the count. */
#ifndef UART_RX_IRQ
#define UART_RX_IRQ -1
#endif

void uart_init(uint32_t clock_hz)
{
    (void)clock_hz;
    UART_BAUDDIV = 16u; /* the smallest legal divider: QEMU ignores the rate, real MPS2 images want >= 16 */
#if UART_RX_IRQ >= 0
    NVIC_ISER0 = 1u << UART_RX_IRQ; /* enabled at the NVIC, armed at the UART by the receive alone */
#endif
    UART_CTRL = 3u; /* TX and RX enable */
}

int uart_irq(void)
{
    if (UART_INTSTATUS & 2u) {
        UART_INTSTATUS = 2u; /* RX: the byte itself stays in the data register for getc */
        return 1;
    }
    return 0;
}

void board_uart_write(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        while (UART_STATE & 1u) { /* TX buffer full */
        }
        UART_DATA = p[i];
    }
}

int board_uart_getc(void)
{
    while (!(UART_STATE & 2u)) { /* RX buffer empty */
#if UART_RX_IRQ >= 0
        /* Masked: a pending interrupt still ends the WFI. Armed before the test (the UART flags only the
         * bytes that come while armed), so a byte between the test and the WFI leaves it pending and the
         * WFI returns at once; disarmed and cleared, status and NVIC alike, before unmasking. */
        __asm__ volatile("cpsid i" ::: "memory");
        UART_CTRL = 3u | CTRL_RX_INT;
        if (!(UART_STATE & 2u)) {
            __asm__ volatile("wfi" ::: "memory");
        }
        UART_CTRL = 3u;
        UART_INTSTATUS = 2u;
        NVIC_ICPR0 = 1u << UART_RX_IRQ;
        __asm__ volatile("cpsie i" ::: "memory");
#endif
    }
    return (int)(UART_DATA & 0xFFu);
}
