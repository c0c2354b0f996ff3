/* STM32 USART / LPUART on the Nucleo's ST-LINK virtual COM port. The F4 has the old SR/DR register
 * layout, F7/H7/L4 the ISR/RDR/TDR one; the RCC and GPIO addresses come from board_config.h, which the
 * build writes from boards.toml. */
#include <stdint.h>

#include "board.h"
#include "board_config.h"

#define REG32(addr) (*(volatile uint32_t *)(addr))

#if STM32_UART_LAYOUT_SR_DR
#define USART_SR REG32(UART_BASE + 0x00u)
#define USART_DR REG32(UART_BASE + 0x04u)
#define USART_BRR REG32(UART_BASE + 0x08u)
#define USART_CR1 REG32(UART_BASE + 0x0Cu)
#define CR1_ENABLE ((1u << 13) | (1u << 3) | (1u << 2)) /* UE, TE, RE */
#define TX_READY() (USART_SR & (1u << 7))               /* TXE */
#define RX_READY() (USART_SR & (1u << 5))               /* RXNE */
#define TX_WRITE(c) (USART_DR = (c))
#define RX_READ() (USART_DR & 0xFFu)
#define RX_OVERRUN() (USART_SR & (1u << 3))
#define RX_CLEAR_OVERRUN() ((void)USART_SR, (void)USART_DR)
#else
#define USART_CR1 REG32(UART_BASE + 0x00u)
#define USART_BRR REG32(UART_BASE + 0x0Cu)
#define USART_ISR REG32(UART_BASE + 0x1Cu)
#define USART_ICR REG32(UART_BASE + 0x20u)
#define USART_RDR REG32(UART_BASE + 0x24u)
#define USART_TDR REG32(UART_BASE + 0x28u)
#define CR1_ENABLE ((1u << 0) | (1u << 3) | (1u << 2)) /* UE, TE, RE */
#define TX_READY() (USART_ISR & (1u << 7))
#define RX_READY() (USART_ISR & (1u << 5))
#define TX_WRITE(c) (USART_TDR = (c))
#define RX_READ() (USART_RDR & 0xFFu)
#define RX_OVERRUN() (USART_ISR & (1u << 3))
#define RX_CLEAR_OVERRUN() (USART_ICR = (1u << 3))
#endif

static void pin_af(uint32_t gpio, uint32_t pin, uint32_t af)
{
    REG32(gpio + 0x00u) = (REG32(gpio + 0x00u) & ~(3u << (2 * pin))) | (2u << (2 * pin)); /* MODER: AF */
    REG32(gpio + 0x08u) |= (3u << (2 * pin));                                            /* OSPEEDR: high */
    const uint32_t afr = gpio + (pin < 8 ? 0x20u : 0x24u);
    const uint32_t shift = 4u * (pin & 7u);
    REG32(afr) = (REG32(afr) & ~(0xFu << shift)) | (af << shift);
}

void uart_init(uint32_t clock_hz)
{
#ifdef STM32_PWR_ENABLE
    STM32_PWR_ENABLE(); /* L4+: port G sits on VDDIO2, which must be declared valid first */
#endif
    REG32(RCC_GPIO_EN_REG) |= (1u << RCC_GPIO_EN_BIT);
    REG32(RCC_UART_EN_REG) |= (1u << RCC_UART_EN_BIT);
    (void)REG32(RCC_UART_EN_REG); /* the enable takes effect after a read-back */
    pin_af(GPIO_BASE, UART_TX_PIN, UART_AF);
    pin_af(GPIO_BASE, UART_RX_PIN, UART_AF);
    USART_CR1 = 0;
#if STM32_LPUART
    USART_BRR = (uint32_t)(((uint64_t)clock_hz * 256u + UART_BAUD / 2u) / UART_BAUD);
#else
    USART_BRR = (clock_hz + UART_BAUD / 2u) / UART_BAUD; /* oversampling by 16 */
#endif
    USART_CR1 = CR1_ENABLE;
}

void board_uart_write(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        while (!TX_READY()) {
        }
        TX_WRITE(p[i]);
    }
}

int board_uart_getc(void)
{
    for (;;) {
        if (RX_OVERRUN()) { /* a lost byte is the protocol's to detect (CRC); the port must not stall */
            RX_CLEAR_OVERRUN();
        }
        if (RX_READY()) {
            return (int)RX_READ();
        }
    }
}

int uart_irq(void)
{
    return 0; /* polled: it never asks for an interrupt */
}
