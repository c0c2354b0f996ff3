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

/* Bytes 1 and 3 sign-extended to two halfwords: SXTB16 with its ROR #8 operand (gcc would emit a
 * separate ROR for __sxtb16(__ror(v, 8))). */
static inline int32_t tk_sxtb16_odd(int32_t v)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
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
        acc = __smlad(tk_sxtb16_odd(va), tk_sxtb16_odd(vb), acc);
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
        const int32_t xe = __sxtb16(vx), xo = tk_sxtb16_odd(vx);
        const int32_t v0 = tk_load4(w0 + i);
        const int32_t v1 = tk_load4(w1 + i);
        s0 = __smlad(xe, __sxtb16(v0), s0);
        s0 = __smlad(xo, tk_sxtb16_odd(v0), s0);
        s1 = __smlad(xe, __sxtb16(v1), s1);
        s1 = __smlad(xo, tk_sxtb16_odd(v1), s1);
    }
#endif
    for (; i < n; i++) {
        s0 += x[i] * w0[i];
        s1 += x[i] * w1[i];
    }
    *acc0 += s0;
    *acc1 += s1;
}

/* Four output channels of a matrix-vector product at once, weights in the "4-interleaved" layout the
 * code generator writes for pointwise convolutions and fully connected layers: for every 4 input
 * elements, 4 bytes of channel 0, then of channels 1, 2, 3; then the n % 4 tail elements of each
 * channel. One pass over x feeds four accumulators. */
static inline void tk_dot4x4(const int8_t *x, const int8_t *w, int32_t n, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    const int8_t *end = x + (n & ~3);
#if defined(__ARM_FEATURE_DSP)
    for (; x != end; x += 4, w += 16) {
        const int32_t xv = tk_load4(x);
        const int32_t xe = __sxtb16(xv), xo = tk_sxtb16_odd(xv);
        int32_t v = tk_load4(w);
        a0 = __smlad(xo, tk_sxtb16_odd(v), __smlad(xe, __sxtb16(v), a0));
        v = tk_load4(w + 4);
        a1 = __smlad(xo, tk_sxtb16_odd(v), __smlad(xe, __sxtb16(v), a1));
        v = tk_load4(w + 8);
        a2 = __smlad(xo, tk_sxtb16_odd(v), __smlad(xe, __sxtb16(v), a2));
        v = tk_load4(w + 12);
        a3 = __smlad(xo, tk_sxtb16_odd(v), __smlad(xe, __sxtb16(v), a3));
    }
#else
    for (; x != end; x += 4, w += 16) {
        const int32_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
        a0 += x0 * w[0] + x1 * w[1] + x2 * w[2] + x3 * w[3];
        a1 += x0 * w[4] + x1 * w[5] + x2 * w[6] + x3 * w[7];
        a2 += x0 * w[8] + x1 * w[9] + x2 * w[10] + x3 * w[11];
        a3 += x0 * w[12] + x1 * w[13] + x2 * w[14] + x3 * w[15];
    }
#endif
    const int32_t r = n & 3;
    for (int32_t i = 0; i < r; i++) {
        const int32_t xi = x[i];
        a0 += xi * w[i];
        a1 += xi * w[r + i];
        a2 += xi * w[2 * r + i];
        a3 += xi * w[3 * r + i];
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* acc[j] += x[j] * w[j] for 4 adjacent channels (depthwise: one tap of four channels). */
static inline void tk_mac4(const int8_t *x, const int8_t *w, int32_t acc[4])
{
#if defined(__ARM_FEATURE_DSP)
    const int32_t xv = tk_load4(x), wv = tk_load4(w);
    const int32_t xe = __sxtb16(xv), xo = tk_sxtb16_odd(xv);
    const int32_t we = __sxtb16(wv), wo = tk_sxtb16_odd(wv);
    acc[0] = __smlabb(xe, we, acc[0]);
    acc[1] = __smlabb(xo, wo, acc[1]);
    acc[2] = __smlatt(xe, we, acc[2]);
    acc[3] = __smlatt(xo, wo, acc[3]);
#else
    acc[0] += x[0] * w[0];
    acc[1] += x[1] * w[1];
    acc[2] += x[2] * w[2];
    acc[3] += x[3] * w[3];
#endif
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
