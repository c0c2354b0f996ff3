/* Fixed-point helpers with TFLite's arithmetic (gemmlowp rounding, the default "double rounding"
 * MultiplyByQuantizedMultiplier). Every int8 kernel requantizes through these, so the generated engine
 * is bit-exact with TFLite's reference kernels. Only <stdint.h>: no float, no libc. */
#ifndef TK_FIXEDPOINT_H
#define TK_FIXEDPOINT_H

#include <stdint.h>

/* Signed 32-bit arithmetic that wraps like the two's-complement hardware does (plain int32 overflow is
 * undefined in C; TFLite's gemmlowp code relies on wrapping in a few places). */
static inline int32_t tk_wrap_add(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
static inline int32_t tk_wrap_sub(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }

/* gemmlowp SaturatingRoundingDoublingHighMul: a * b / 2^31 rounded, saturating the one overflow case.
 * gemmlowp adds a sign-dependent nudge (2^30 or 1 - 2^30) and truncates towards zero; for every
 * product that equals adding 2^30 and flooring (checked exhaustively at the rounding boundaries and on
 * random pairs), which is one SMULL, one add and one shift on a Cortex-M. */
static inline int32_t tk_srdhm(int32_t a, int32_t b)
{
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    return (int32_t)(((int64_t)a * (int64_t)b + ((int64_t)1 << 30)) >> 31);
}

/* gemmlowp RoundingDivideByPOT: x / 2^e rounded to nearest, ties away from zero. 0 <= e <= 31. */
static inline int32_t tk_rdbpot(int32_t x, int e)
{
    const int32_t mask = (int32_t)((((uint32_t)1) << e) - 1u);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (remainder > threshold ? 1 : 0);
}

/* TFLite MultiplyByQuantizedMultiplier (shift > 0: left shift before the multiply). */
static inline int32_t tk_mbqm(int32_t x, int32_t multiplier, int32_t shift)
{
    const int left = shift > 0 ? (int)shift : 0;
    const int right = shift > 0 ? 0 : (int)-shift;
    return tk_rdbpot(tk_srdhm((int32_t)((uint32_t)x << left), multiplier), right);
}

/* The single-rounding variant: round(x * multiplier * 2^(shift - 31)) in one step, in 64 bits. TFLite's
 * reference FULLY_CONNECTED (LiteRT 2.3) rounds this way: on the MLPerf ad01 model 58 of 8360 outputs
 * differ from the interpreter under double rounding, none under this. -31 < shift < 31. */
static inline int32_t tk_mbqm_single(int32_t x, int32_t multiplier, int32_t shift)
{
    const int total = 31 - (int)shift;
    const int64_t round = (int64_t)1 << (total - 1);
    return (int32_t)(((int64_t)x * (int64_t)multiplier + round) >> total);
}

/* SRDHM(x, m) for |x| < 2^30: (2x * m + 2^31) >> 32, one SMMULR on a DSP core. */
static inline int32_t tk_srdhm_small(int32_t x, int32_t multiplier)
{
#if defined(__ARM_FEATURE_DSP)
    int32_t y;
    __asm__("smmulr %0, %1, %2" : "=r"(y) : "r"(x * 2), "r"(multiplier));
    return y;
#else
    return (int32_t)(((int64_t)x * (int64_t)multiplier + ((int64_t)1 << 30)) >> 31);
#endif
}

/* tk_mbqm for shift <= -1 and |x| < 2^30 (the code generator proves both per layer): then
 * RoundingDivideByPOT(y, e) = (y + 2^(e-1) - (y < 0)) >> e without overflow. Same results as tk_mbqm,
 * fewer instructions. */
static inline int32_t tk_mbqm_fast(int32_t x, int32_t multiplier, int32_t shift)
{
    const int32_t y = tk_srdhm_small(x, multiplier);
    const int e = (int)-shift;
    return (y + (int32_t)(((uint32_t)1) << (e - 1)) - (y < 0 ? 1 : 0)) >> e;
}

/* As tk_mbqm_fast, also for shift == 0 (ADD's larger-scale input has multiplier 0.5, shift 0). */
static inline int32_t tk_mbqm_fast0(int32_t x, int32_t multiplier, int32_t shift)
{
    return shift == 0 ? tk_srdhm_small(x, multiplier) : tk_mbqm_fast(x, multiplier, shift);
}

static inline int32_t tk_clamp(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

/* gemmlowp SaturatingRoundingMultiplyByPOT with a positive exponent: a saturating left shift. */
static inline int32_t tk_sat_shl(int32_t x, int e)
{
    const int32_t threshold = (int32_t)((((uint32_t)1) << (31 - e)) - 1u);
    if (x > threshold) {
        return INT32_MAX;
    }
    if (x < -threshold) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << e);
}

#endif
