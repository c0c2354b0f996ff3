/* STM32 clock trees at each Nucleo's nominal clock, and the Cortex-M7 caches. Every ready bit is polled
 * with a bounded loop: a board without its clock input (e.g. no 8 MHz MCO from the ST-LINK) falls back to
 * the reset clock and says so through board_clock_hz(), which HELLO reports and the host checks against
 * boards.toml, instead of hanging before the UART is up. Register values and their reasons:
 * docs/real-boards.md ("Register review"). board_config.h selects the family (STM32_FAMILY_*). */
#include <stdint.h>

#include "board_config.h"
#include "clock_stm32.h"

#ifndef REG32 /* tests/test_clocks.py compiles this file for the host against a simulated register file */
#define REG32(addr) (*(volatile uint32_t *)(addr))
#define BARRIER(insns) __asm__ volatile(insns ::: "memory")
#endif
/* ~1e6 polls of a peripheral register: well over 100 ms at the 4..64 MHz reset clocks, against HSE bypass
 * (immediate), PLL lock (<= 200 us) and regulator settling (<= a few ms) when the hardware is present. */
#define POLL_LIMIT 1000000u

static uint32_t uart_hz = BOARD_RESET_CLOCK_HZ;

static int wait_bits(uint32_t addr, uint32_t mask, uint32_t want)
{
    for (uint32_t n = 0; n < POLL_LIMIT; n++) {
        if ((REG32(addr) & mask) == want) {
            return 1;
        }
    }
    return 0;
}

uint32_t clock_uart_hz(void) { return uart_hz; }

#if STM32_FAMILY_F7 || STM32_FAMILY_H7
/* Cortex-M7 L1 caches (ARMv7-M ARM B3.5 / PM0253): invalidate, then enable. The D-cache is
 * invalidated line by line by set/way, from the geometry in CCSIDR. */
#define SCB_CCR REG32(0xE000ED14u)
#define SCB_CCSIDR REG32(0xE000ED80u)
#define SCB_CSSELR REG32(0xE000ED84u)
#define SCB_ICIALLU REG32(0xE000EF50u)
#define SCB_DCISW REG32(0xE000EF60u)

static void caches_on(void)
{
    BARRIER("dsb\n isb");
    SCB_ICIALLU = 0;
    BARRIER("dsb\n isb");
    SCB_CCR |= (1u << 17); /* IC */
    SCB_CSSELR = 0;        /* level 1 data cache */
    BARRIER("dsb");
    const uint32_t ccsidr = SCB_CCSIDR;
    const uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1u;
    const uint32_t ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
    for (uint32_t s = 0; s < sets; s++) {
        for (uint32_t w = 0; w < ways; w++) {
            SCB_DCISW = (w << 30) | (s << 5); /* 4 ways (bits 31:30), 32-byte lines (set from bit 5) */
        }
    }
    BARRIER("dsb");
    SCB_CCR |= (1u << 16); /* DC */
    BARRIER("dsb\n isb");
}
#endif

#if STM32_FAMILY_F7 || STM32_FAMILY_F4
/* RM0385 (F7) ch. 5, RM0402 (F412) ch. 6: the same RCC layout. */
#define RCC 0x40023800u
#define RCC_CR (RCC + 0x00u)
#define RCC_PLLCFGR (RCC + 0x04u)
#define RCC_CFGR (RCC + 0x08u)
#define RCC_APB1ENR (RCC + 0x40u)
#define PWR 0x40007000u
#define PWR_CR1 (PWR + 0x00u)
#define PWR_CSR1 (PWR + 0x04u)
#define FLASH_ACR 0x40023C00u
#define CR_HSEON (1u << 16)
#define CR_HSERDY (1u << 17)
#define CR_HSEBYP (1u << 18)
#define CR_PLLON (1u << 24)
#define CR_PLLRDY (1u << 25)

#if STM32_FAMILY_F7
/* 216 MHz = 8 MHz HSE (bypass) / M 4 * N 216 / P 2; Q 9 gives USB 48 MHz. AHB /1, APB1 /4 = 54 MHz,
 * APB2 /2 = 108 MHz. Scale 1 + over-drive, 7 wait states, ART accelerator and prefetch. */
#define PLL_M 4u
#define PLL_N 216u
#define PLL_P_BITS 0u /* P = 2 */
#define PLL_Q 9u
#define CFGR_PRESC ((5u << 10) | (4u << 13)) /* PPRE1 /4, PPRE2 /2, HPRE /1 */
#define FLASH_BITS (7u | (1u << 8) | (1u << 9)) /* LATENCY 7, PRFTEN, ARTEN */
#define APB1_HZ 54000000u
#else
/* 100 MHz = 8 MHz HSE (bypass) / M 4 * N 200 / P 4 (VCO 400 MHz); Q 8 (USB unused). AHB /1,
 * APB1 /2 = 50 MHz, APB2 /1. Scale 1, 3 wait states, prefetch and both flash caches. */
#define PLL_M 4u
#define PLL_N 200u
#define PLL_P_BITS 1u /* P = 4 */
#define PLL_Q 8u
#define CFGR_PRESC (4u << 10)                                 /* PPRE1 /2 */
#define FLASH_BITS (3u | (1u << 8) | (1u << 9) | (1u << 10)) /* LATENCY 3, PRFTEN, ICEN, DCEN */
#define APB1_HZ 50000000u
#endif

static uint32_t fail(void)
{
    REG32(RCC_CFGR) = 0;                        /* SYSCLK back to HSI, prescalers /1 */
    wait_bits(RCC_CFGR, 0xCu, 0x0u);            /* SWS = HSI */
    REG32(RCC_CR) &= ~(CR_PLLON | CR_HSEON);
    uart_hz = BOARD_RESET_CLOCK_HZ;
    return BOARD_RESET_CLOCK_HZ;
}

uint32_t clock_setup(void)
{
    REG32(RCC_APB1ENR) |= (1u << 28); /* PWREN */
    (void)REG32(RCC_APB1ENR);
    REG32(PWR_CR1) |= (3u << 14); /* VOS = scale 1 (written with the PLL off; applies once it runs) */
    REG32(RCC_CR) |= CR_HSEBYP;   /* the ST-LINK's 8 MHz MCO drives OSC_IN: no crystal to start */
    REG32(RCC_CR) |= CR_HSEON;
    if (!wait_bits(RCC_CR, CR_HSERDY, CR_HSERDY)) {
        return fail();
    }
    /* Only the fields set here: bits 31:28 are reserved (F74x) or PLLR (F412), kept at reset value. */
    const uint32_t fields = 0x3Fu | (0x1FFu << 6) | (3u << 16) | (1u << 22) | (0xFu << 24);
    REG32(RCC_PLLCFGR) = (REG32(RCC_PLLCFGR) & ~fields) | PLL_M | (PLL_N << 6) | (PLL_P_BITS << 16)
                         | (1u << 22) /* PLLSRC = HSE */ | (PLL_Q << 24);
    REG32(RCC_CR) |= CR_PLLON;
    if (!wait_bits(RCC_CR, CR_PLLRDY, CR_PLLRDY)) {
        return fail();
    }
#if STM32_FAMILY_F7
    REG32(PWR_CR1) |= (1u << 16); /* ODEN: over-drive, needed above 180 MHz */
    if (!wait_bits(PWR_CSR1, 1u << 16, 1u << 16)) { /* ODRDY */
        return fail();
    }
    REG32(PWR_CR1) |= (1u << 17); /* ODSWEN: switch the regulator to over-drive */
    if (!wait_bits(PWR_CSR1, 1u << 17, 1u << 17)) { /* ODSWRDY */
        return fail();
    }
#else
    if (!wait_bits(PWR_CSR1, 1u << 14, 1u << 14)) { /* VOSRDY */
        return fail();
    }
#endif
    REG32(FLASH_ACR) = FLASH_BITS; /* wait states before the clock rises */
    if ((REG32(FLASH_ACR) & 0xFu) != (FLASH_BITS & 0xFu)) {
        return fail();
    }
    REG32(RCC_CFGR) = CFGR_PRESC;       /* APB prescalers first: no bus ever runs above its maximum */
    REG32(RCC_CFGR) = CFGR_PRESC | 2u;  /* SW = PLL */
    if (!wait_bits(RCC_CFGR, 0xCu, 0x8u)) { /* SWS = PLL */
        return fail();
    }
#if STM32_FAMILY_F7
    caches_on();
#endif
    uart_hz = APB1_HZ; /* USART3 on APB1 (F7: DCKCFGR2.USART3SEL = 00, its reset value) */
    return BOARD_CLOCK_HZ;
}
#endif /* F4, F7 */

#if STM32_FAMILY_H7
/* RM0433. 400 MHz = 8 MHz HSE (bypass) / DIVM1 4 * DIVN1 400 / DIVP1 2 (VCO 800 MHz, wide range, input
 * 2 MHz: PLL1RGE = 2..4 MHz). CPU /1 = 400 MHz, AXI/AHB /2 = 200 MHz, every APB /2 = 100 MHz. VOS1 (the
 * highest scale rev Y allows), LDO supply, 2 wait states with WRHIGHFREQ = 2 for a 185..210 MHz AXI clock. */
#define RCC 0x58024400u
#define RCC_CR (RCC + 0x00u)
#define RCC_CFGR (RCC + 0x10u)
#define RCC_D1CFGR (RCC + 0x18u)
#define RCC_D2CFGR (RCC + 0x1Cu)
#define RCC_D3CFGR (RCC + 0x20u)
#define RCC_PLLCKSELR (RCC + 0x28u)
#define RCC_PLLCFGR (RCC + 0x2Cu)
#define RCC_PLL1DIVR (RCC + 0x30u)
#define PWR 0x58024800u
#define PWR_CSR1 (PWR + 0x04u)
#define PWR_CR3 (PWR + 0x0Cu)
#define PWR_D3CR (PWR + 0x18u)
#define FLASH_ACR 0x52002000u

static uint32_t fail(void)
{
    REG32(RCC_CFGR) &= ~7u; /* SW = HSI */
    wait_bits(RCC_CFGR, 0x38u, 0x0u);
    REG32(RCC_D1CFGR) = 0;
    REG32(RCC_D2CFGR) = 0;
    REG32(RCC_D3CFGR) = 0;
    REG32(RCC_CR) &= ~((1u << 24) | (1u << 16)); /* PLL1ON, HSEON */
    uart_hz = BOARD_RESET_CLOCK_HZ;
    return BOARD_RESET_CLOCK_HZ;
}

uint32_t clock_setup(void)
{
    /* Supply: LDO on, bypass off (the Nucleo-H743ZI/ZI2 default); this register is write-once after
     * power-on, and SCUEN is cleared by the write. Wait until the regulator reports its level. */
    REG32(PWR_CR3) = (REG32(PWR_CR3) & ~7u) | (1u << 1); /* LDOEN; SCUEN, BYPASS = 0 */
    if (!wait_bits(PWR_CSR1, 1u << 13, 1u << 13)) {       /* ACTVOSRDY */
        return fail();
    }
    REG32(PWR_D3CR) = (REG32(PWR_D3CR) & ~(3u << 14)) | (3u << 14); /* VOS1 */
    if (!wait_bits(PWR_D3CR, 1u << 13, 1u << 13)) {                 /* VOSRDY */
        return fail();
    }
    REG32(RCC_CR) |= (1u << 18); /* HSEBYP: the ST-LINK's MCO */
    REG32(RCC_CR) |= (1u << 16); /* HSEON */
    if (!wait_bits(RCC_CR, 1u << 17, 1u << 17)) { /* HSERDY */
        return fail();
    }
    REG32(RCC_PLLCKSELR) = (REG32(RCC_PLLCKSELR) & ~((0x3Fu << 4) | 3u)) | (4u << 4) | 2u; /* DIVM1 4, HSE */
    REG32(RCC_PLLCFGR) = (REG32(RCC_PLLCFGR) & ~0xFu) | (1u << 2) /* PLL1RGE 2..4 MHz, wide VCO, int */
                         | (1u << 16) | (1u << 17) | (1u << 18);  /* DIVP1EN, DIVQ1EN, DIVR1EN */
    REG32(RCC_PLL1DIVR) = (400u - 1u) | ((2u - 1u) << 9) | ((4u - 1u) << 16) | ((2u - 1u) << 24);
    REG32(RCC_CR) |= (1u << 24); /* PLL1ON */
    if (!wait_bits(RCC_CR, 1u << 25, 1u << 25)) { /* PLL1RDY */
        return fail();
    }
    REG32(FLASH_ACR) = 2u | (2u << 4); /* LATENCY 2, WRHIGHFREQ 2 */
    if ((REG32(FLASH_ACR) & 0x3Fu) != (2u | (2u << 4))) {
        return fail();
    }
    REG32(RCC_D1CFGR) = (8u << 0) | (4u << 4);   /* HPRE /2, D1PPRE /2, D1CPRE /1 */
    REG32(RCC_D2CFGR) = (4u << 4) | (4u << 8);   /* D2PPRE1 /2, D2PPRE2 /2 */
    REG32(RCC_D3CFGR) = (4u << 4);               /* D3PPRE /2 */
    REG32(RCC_CFGR) = (REG32(RCC_CFGR) & ~7u) | 3u; /* SW = PLL1 */
    if (!wait_bits(RCC_CFGR, 0x38u, 3u << 3)) {      /* SWS = PLL1 */
        return fail();
    }
    caches_on();
    uart_hz = 100000000u; /* USART3 kernel clock = rcc_pclk1 (D2CCIP2R.USART234578SEL = 0, its reset value) */
    return BOARD_CLOCK_HZ;
}
#endif /* H7 */

#if STM32_FAMILY_L4
/* RM0432 (L4+). 120 MHz = HSI16 / PLLM 2 * PLLN 30 / PLLR 2 (VCO 240 MHz, input 8 MHz). HSI16 rather than
 * HSE: no dependence on the ST-LINK MCO reaching OSC_IN (solder bridges differ between Nucleo-144 variants),
 * and HSI16 is trimmed to 1 % (MSI is not, without LSE). Range 1 boost (R1MODE = 0) for > 80 MHz,
 * 5 wait states, AHB /1, APB /1. */
#define RCC 0x40021000u
#define RCC_CR (RCC + 0x00u)
#define RCC_CFGR (RCC + 0x08u)
#define RCC_PLLCFGR (RCC + 0x0Cu)
#define RCC_APB1ENR1 (RCC + 0x58u)
#define PWR 0x40007000u
#define PWR_CR1 (PWR + 0x00u)
#define PWR_SR2 (PWR + 0x14u)
#define PWR_CR5 (PWR + 0x80u)
#define FLASH_ACR 0x40022000u

static uint32_t fail(void)
{
    REG32(RCC_CFGR) = 0; /* SYSCLK back to MSI, prescalers /1 */
    wait_bits(RCC_CFGR, 0xCu, 0x0u);
    REG32(RCC_CR) &= ~(1u << 24); /* PLLON */
    uart_hz = BOARD_RESET_CLOCK_HZ;
    return BOARD_RESET_CLOCK_HZ;
}

uint32_t clock_setup(void)
{
    REG32(RCC_APB1ENR1) |= (1u << 28); /* PWREN */
    (void)REG32(RCC_APB1ENR1);
    REG32(PWR_CR1) = (REG32(PWR_CR1) & ~(3u << 9)) | (1u << 9); /* VOS = range 1 */
    REG32(PWR_CR5) &= ~(1u << 8);                               /* R1MODE = 0: boost */
    if (!wait_bits(PWR_SR2, 1u << 10, 0)) {                     /* VOSF clear */
        return fail();
    }
    REG32(RCC_CR) |= (1u << 8); /* HSION */
    if (!wait_bits(RCC_CR, 1u << 10, 1u << 10)) { /* HSIRDY */
        return fail();
    }
    /* PLLSRC HSI16, PLLM 2 (field = M-1), PLLN 30, PLLR 2 (field 0) with PLLREN. */
    REG32(RCC_PLLCFGR) = 2u | ((2u - 1u) << 4) | (30u << 8) | (1u << 24);
    REG32(RCC_CR) |= (1u << 24); /* PLLON */
    if (!wait_bits(RCC_CR, 1u << 25, 1u << 25)) { /* PLLRDY */
        return fail();
    }
    REG32(FLASH_ACR) = 5u | (1u << 8) | (1u << 9) | (1u << 10); /* LATENCY 5, PRFTEN, ICEN, DCEN */
    if ((REG32(FLASH_ACR) & 0xFu) != 5u) {
        return fail();
    }
    /* Above 80 MHz the switch goes through AHB /2 for at least 1 us (RM0432 "range 1 boost" sequence). */
    REG32(RCC_CFGR) = (8u << 4) | 3u; /* HPRE /2, SW = PLL */
    if (!wait_bits(RCC_CFGR, 0xCu, 0xCu)) {
        return fail();
    }
    for (volatile uint32_t n = 0; n < 200u; n++) { /* >= 1 us at 60 MHz HCLK */
    }
    REG32(RCC_CFGR) = 3u; /* HPRE /1 */
    uart_hz = 120000000u; /* LPUART1 on PCLK1 (CCIPR.LPUART1SEL = 00, its reset value) */
    return BOARD_CLOCK_HZ;
}
#endif /* L4 */
