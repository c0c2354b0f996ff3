/* The STM32 clock tree (clock_stm32.c), built for real boards only; QEMU machines keep their reset clock. */
#ifndef CLOCK_STM32_H
#define CLOCK_STM32_H

#include <stdint.h>

uint32_t clock_setup(void);   /* the core clock reached: nominal, or the reset clock after a fallback */
uint32_t clock_uart_hz(void); /* the kernel clock of the VCP UART as set up (baud divisors follow it) */

#endif
