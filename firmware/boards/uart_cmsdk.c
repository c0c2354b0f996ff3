/* ARM CMSDK APB UART (MPS2 / MPS3 FPGA images, as QEMU models them). */
#include <stdint.h>

#include "board.h"
#include "board_config.h"

#define UART_DATA (*(volatile uint32_t *)(UART_BASE + 0x00u))
#define UART_STATE (*(volatile uint32_t *)(UART_BASE + 0x04u))
#define UART_CTRL (*(volatile uint32_t *)(UART_BASE + 0x08u))
#define UART_BAUDDIV (*(volatile uint32_t *)(UART_BASE + 0x10u))

void uart_init(uint32_t clock_hz)
{
    (void)clock_hz;
    UART_BAUDDIV = 16u; /* the smallest legal divider: QEMU ignores the rate, real MPS2 images want >= 16 */
    UART_CTRL = 3u;     /* TX and RX enable */
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
    }
    return (int)(UART_DATA & 0xFFu);
}
