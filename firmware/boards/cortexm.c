/* Cortex-M core support shared by every board: vector table, reset, fault reporting, the counter
 * (DWT CYCCNT on hardware, SysTick under QEMU where CYCCNT reads 0) and the exit path. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "board_config.h"

#define REG32(addr) (*(volatile uint32_t *)(addr))
#define SCB_CPACR REG32(0xE000ED88u)
#define SCB_CFSR REG32(0xE000ED28u)
#define SCB_SHCSR REG32(0xE000ED24u)
#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define DEMCR REG32(0xE000EDFCu)
#define DWT_CTRL REG32(0xE0001000u)
#define DWT_CYCCNT REG32(0xE0001004u)
#define DWT_LAR REG32(0xE0001FB0u)

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, __stack_end__;
extern void (*__init_array_start[])(void), (*__init_array_end[])(void);
int main(void);

/* Static constructors of a C++ engine, after the FPU is on. A function of its own, so that reset_handler's
 * frame (under every other frame: it counts in each firmware's peak stack) stays as small as before. */
__attribute__((noinline)) static void run_constructors(void)
{
    for (void (**ctor)(void) = __init_array_start; ctor < __init_array_end; ctor++) {
        (*ctor)();
    }
}

void reset_handler(void)
{
    memcpy(&_sdata, &_sidata, (uint32_t)((char *)&_edata - (char *)&_sdata));
    memset(&_sbss, 0, (uint32_t)((char *)&_ebss - (char *)&_sbss));
#if BOARD_HAS_FPU
    SCB_CPACR |= (0xFu << 20); /* CP10, CP11 full access: the kernels' compiler may use the FPU */
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    SCB_SHCSR |= (7u << 16); /* MemManage, BusFault, UsageFault as their own handlers: a precise report */
    run_constructors();
    main();
    board_exit(0);
}

__attribute__((naked)) void hardfault_handler(void) { __asm__ volatile("movs r0, #1\n b fault_entry"); }
__attribute__((naked)) void memmanage_handler(void) { __asm__ volatile("movs r0, #2\n b fault_entry"); }
__attribute__((naked)) void busfault_handler(void) { __asm__ volatile("movs r0, #3\n b fault_entry"); }
__attribute__((naked)) void usagefault_handler(void) { __asm__ volatile("movs r0, #4\n b fault_entry"); }

/* The faulting PC and LR come from the exception frame on whichever stack was active; read it before
 * anything else touches the stack pointer. */
__attribute__((naked, used)) void fault_entry(void)
{
    __asm__ volatile(
        "tst lr, #4\n"
        "ite eq\n"
        "mrseq r1, msp\n"
        "mrsne r1, psp\n"
        "b fault_report\n");
}

__attribute__((used)) void fault_report(uint32_t kind, uint32_t *frame)
{
    runtime_fault(frame[6], frame[5], SCB_CFSR, kind);
    /* Park rather than exit QEMU: a QEMU that exits with a request it has not read yet (one the host sent
     * again while this inference ran) resets the connection, and the reset can discard the report still
     * on its way. The host reads the report and ends the session. */
    for (;;) {
        __asm__ volatile("wfi");
    }
}

__attribute__((naked)) void default_handler(void) { __asm__ volatile("movs r0, #5\n b fault_entry"); }

/* An interrupt the UART driver asked for (it wakes a sleeping receive) is its to clear; any other is a
 * fault. */
__attribute__((naked)) void irq_handler(void)
{
    __asm__ volatile(
        "push {r0, lr}\n"
        "bl uart_irq\n"
        "cmp r0, #0\n"
        "pop {r0, lr}\n"
        "it ne\n"
        "bxne lr\n"
        "movs r0, #5\n"
        "b fault_entry\n");
}

static volatile uint32_t systick_wraps;
void systick_handler(void) { systick_wraps++; }

typedef void (*vector_t)(void);
__attribute__((section(".vectors"), used)) const vector_t vectors[16 + 16] = {
    (vector_t)&__stack_end__, reset_handler, default_handler, hardfault_handler,
    memmanage_handler, busfault_handler, usagefault_handler, default_handler,
    0, 0, 0, default_handler, default_handler, 0, default_handler, systick_handler,
    irq_handler, irq_handler, irq_handler, irq_handler, irq_handler, irq_handler, irq_handler, irq_handler,
    irq_handler, irq_handler, irq_handler, irq_handler, irq_handler, irq_handler, irq_handler, irq_handler,
};

#if BOARD_QEMU
/* CYCCNT reads 0 under QEMU; SysTick on the processor clock under -icount shift=0 counts instructions. */
const char board_counter_source[] = "qemu-icount";

void board_counter_start(void)
{
    SYST_CSR = 0;
    SYST_RVR = 0x00FFFFFFu;
    SYST_CVR = 0;
    systick_wraps = 0;
    SYST_CSR = 7u; /* processor clock, interrupt on wrap, enable */
    /* The counter holds 0 until its first tick loads the reload value; a read before that would look like
     * a full period. Under -icount this wait is the same number of instructions every time. */
    while (SYST_CVR == 0) {
    }
}

uint64_t board_counter_read(void)
{
    uint32_t hi, lo;
    do { /* a wrap between the two reads would pair a new count with an old wrap count */
        hi = systick_wraps;
        lo = SYST_CVR;
    } while (hi != systick_wraps);
    return ((uint64_t)hi << 24) + (0x00FFFFFFu - lo);
}
#else
const char board_counter_source[] = "dwt";
static uint32_t dwt_last, dwt_high;

void board_counter_start(void)
{
    DEMCR |= (1u << 24); /* TRCENA */
    DWT_LAR = 0xC5ACCE55u; /* Cortex-M7 keeps the DWT locked until this key is written */
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u;
    dwt_last = 0;
    dwt_high = 0;
}

uint64_t board_counter_read(void)
{
    uint32_t now = DWT_CYCCNT; /* extended to 64 bits: reads come far more often than every 2^32 cycles */
    if (now < dwt_last) {
        dwt_high++;
    }
    dwt_last = now;
    return ((uint64_t)dwt_high << 32) | now;
}
#endif

#if BOARD_CLOCK_SETUP
#include "clock_stm32.h"
static uint32_t core_clock_hz = BOARD_RESET_CLOCK_HZ;
#else
static const uint32_t core_clock_hz = BOARD_CLOCK_HZ;
#endif

uint32_t board_clock_hz(void) { return core_clock_hz; }

void board_init(void)
{
#if BOARD_CLOCK_SETUP
    core_clock_hz = clock_setup(); /* the reset clock again if the tree could not be set up */
    uart_init(clock_uart_hz());
#else
    uart_init(BOARD_CLOCK_HZ);
#endif
    board_counter_start();
}

#if BOARD_QEMU
static uint32_t semihost(uint32_t op, const volatile uint32_t *args)
{
    register uint32_t r0 __asm__("r0") = op;
    register const volatile uint32_t *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

/* One argument block serves every file call (none takes more than three words). */
static volatile uint32_t sh_args[3];

int32_t board_file_open(const char *path, uint32_t length, uint32_t mode)
{
    sh_args[0] = (uint32_t)path;
    sh_args[1] = mode;
    sh_args[2] = length;
    return (int32_t)semihost(0x01u, sh_args); /* SYS_OPEN */
}

int32_t board_file_read(int32_t fd, uint32_t offset, void *dst, uint32_t n)
{
    sh_args[0] = (uint32_t)fd;
    sh_args[1] = offset;
    if (semihost(0x0Au, sh_args) != 0) { /* SYS_SEEK */
        return -1;
    }
    sh_args[1] = (uint32_t)dst;
    sh_args[2] = n;
    const uint32_t left = semihost(0x06u, sh_args); /* SYS_READ: the bytes NOT read */
    return left <= n ? (int32_t)(n - left) : -1;
}

int32_t board_file_write(int32_t fd, const void *src, uint32_t n)
{
    sh_args[0] = (uint32_t)fd;
    sh_args[1] = (uint32_t)src;
    sh_args[2] = n;
    return semihost(0x05u, sh_args) == 0 ? (int32_t)n : -1; /* SYS_WRITE: the bytes NOT written */
}

void board_file_close(int32_t fd)
{
    sh_args[0] = (uint32_t)fd;
    (void)semihost(0x02u, sh_args); /* SYS_CLOSE */
}
#else
/* No host to reach: a board without a debugger would fault on the semihosting trap. */
int32_t board_file_open(const char *path, uint32_t length, uint32_t mode)
{
    (void)path, (void)length, (void)mode;
    return -1;
}

int32_t board_file_read(int32_t fd, uint32_t offset, void *dst, uint32_t n)
{
    (void)fd, (void)offset, (void)dst, (void)n;
    return -1;
}

int32_t board_file_write(int32_t fd, const void *src, uint32_t n)
{
    (void)fd, (void)src, (void)n;
    return -1;
}

void board_file_close(int32_t fd)
{
    (void)fd;
}
#endif

void board_exit(int code)
{
#if BOARD_QEMU
    /* SYS_EXIT_EXTENDED: QEMU exits with `code` as its status. */
    const volatile uint32_t block[2] = {0x20026u, (uint32_t)code};
    (void)semihost(0x20u, block);
#else
    (void)code;
#endif
    for (;;) {
        __asm__ volatile("wfi");
    }
}
