/* int8 dot products: the inner loop of conv, pointwise and fully connected layers. The DSP path
 * (SMLAD on sign-extended byte pairs) sums the same products as the portable loop, only in another
 * order; integer addition is exact, so both give identical results. */
#ifndef TK_DOT_H
#define TK_DOT_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>

static inline int32_t tk_load4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4); /* an unaligned LDR on v7E-M/v8-M */
    return v;
}

/* Rotate right by 8 (gcc 12's arm_acle.h has no __ror; this pattern folds into SXTB16's ROR operand). */
static inline int32_t tk_ror8(int32_t v)
{
    return (int32_t)(((uint32_t)v >> 8) | ((uint32_t)v << 24));
}
#endif

/* sum(a[i] * b[i]) for i < n. */
static inline int32_t tk_dot(const int8_t *a, const int8_t *b, int32_t n)
{
    int32_t acc = 0;
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP)
    for (; i + 4 <= n; i += 4) {
        const int32_t va = tk_load4(a + i);
        const int32_t vb = tk_load4(b + i);
        acc = __smlad(__sxtb16(va), __sxtb16(vb), acc);
        acc = __smlad(__sxtb16(tk_ror8(va)), __sxtb16(tk_ror8(vb)), acc);
    }
#else
    for (; i + 4 <= n; i += 4) {
        acc += a[i] * b[i] + a[i + 1] * b[i + 1] + a[i + 2] * b[i + 2] + a[i + 3] * b[i + 3];
    }
#endif
    for (; i < n; i++) {
        acc += a[i] * b[i];
    }
    return acc;
}

/* Two dot products sharing `x` (two output channels of one pixel): loads x once for both. */
static inline void tk_dot2(const int8_t *x, const int8_t *w0, const int8_t *w1, int32_t n, int32_t *acc0,
                           int32_t *acc1)
{
    int32_t s0 = 0, s1 = 0;
    int32_t i = 0;
#if defined(__ARM_FEATURE_DSP)
    for (; i + 4 <= n; i += 4) {
        const int32_t vx = tk_load4(x + i);
        const int32_t xe = __sxtb16(vx), xo = __sxtb16(tk_ror8(vx));
        const int32_t v0 = tk_load4(w0 + i);
        const int32_t v1 = tk_load4(w1 + i);
        s0 = __smlad(xe, __sxtb16(v0), s0);
        s0 = __smlad(xo, __sxtb16(tk_ror8(v0)), s0);
        s1 = __smlad(xe, __sxtb16(v1), s1);
        s1 = __smlad(xo, __sxtb16(tk_ror8(v1)), s1);
    }
#endif
    for (; i < n; i++) {
        s0 += x[i] * w0[i];
        s1 += x[i] * w1[i];
    }
    *acc0 += s0;
    *acc1 += s1;
}

static inline int32_t tk_sum(const int8_t *a, int32_t n)
{
    int32_t acc = 0;
    for (int32_t i = 0; i < n; i++) {
        acc += a[i];
    }
    return acc;
}

#endif
