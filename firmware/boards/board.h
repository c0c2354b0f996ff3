/* The board layer: what the runtime needs from a chip. One implementation per family (cortexm.c for
 * the core, uart_*.c for the serial port); the build picks the files and defines from boards.toml. */
#ifndef BOARD_H
#define BOARD_H

#include <stdint.h>

void board_init(void);                              /* UART, cycle/tick counter */
void board_uart_write(const uint8_t *p, uint32_t n);
int board_uart_getc(void);                          /* blocking; 0..255 */
void board_counter_start(void);                     /* zero the counter and run it */
uint64_t board_counter_read(void);                  /* ticks since start, 64-bit */
extern const char board_counter_source[];           /* "dwt" on hardware, "qemu-icount" under QEMU */
uint32_t board_clock_hz(void);                      /* the clock the firmware believes it runs at */
void board_exit(int code);                          /* semihosting exit under QEMU; parks on hardware */
/* QEMU only: host files by semihosting, past the emulated UART (-1 on a board). `path` NUL-terminated,
 * `length` long; mode as semihosting's SYS_OPEN (1 "rb", 5 "wb"); read and write return the bytes moved
 * or -1. */
int32_t board_file_open(const char *path, uint32_t length, uint32_t mode);
int32_t board_file_read(int32_t fd, uint32_t offset, void *dst, uint32_t n);
int32_t board_file_write(int32_t fd, const void *src, uint32_t n);
void board_file_close(int32_t fd);

/* Implemented by the runtime: report a fault over the UART, then exit. */
void runtime_fault(uint32_t pc, uint32_t lr, uint32_t cfsr, uint32_t kind);

/* The UART drivers' half of board_init, and their interrupt: 1 if it was theirs (and is now cleared). */
void uart_init(uint32_t clock_hz);
int uart_irq(void);

#endif
