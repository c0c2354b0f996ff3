/* Kernels specialised per layer. The generated model.c gives each eligible CONV_2D, DEPTHWISE_CONV_2D
 * and FULLY_CONNECTED layer a function of its own that calls one of the always-inline templates below
 * with the layer's shapes as literal constants, so the compiler drops every runtime branch on them,
 * sizes the loops and turns tap offsets into immediates. The code generator takes this path only where
 * the short exact requantization holds (see tk_ch_t); other layers keep the generic kernels.
 *
 * Arithmetic is TFLite's, bit for bit: the DSP instructions only reorder exact integer sums, and the
 * requantization is tk_mbqm_fast (or tk_mbqm_single) with the output offset folded into the rounding
 * constant, which is exact while nothing overflows (the generator proves that per channel). */
#ifndef TK_SPEC_H
#define TK_SPEC_H

#include <stdint.h>

#include "tk_dot.h"
#include "tk_fixedpoint.h"

#define TK_INLINE static inline __attribute__((always_inline))

/* Row y of a tensor whose rows are ROWBYTES apart: a whole tensor (RING 0), or a ring of RING rows that
 * a fused group keeps instead (row y in slot y % RING; see harness/engines/native/fuse.py). */
#define TK_ROW(base, y, RING, ROWBYTES) ((base) + ((RING) ? (y) % (RING) : (y)) * (ROWBYTES))

/* Per output channel, in the order the kernels read them (one struct: adjacent loads). */
typedef struct {
    int32_t bias; /* folded: bias + input_offset * sum(weights) */
    int32_t mult; /* Q31 multiplier */
    int32_t rnd;  /* 2^(e-1) + output_offset * 2^e */
    int32_t e;    /* right shift, >= 1 */
} tk_ch_t;

/* FULLY_CONNECTED's single rounding: round(acc * mult / 2^(32 + e)) + output_offset as
 * ((acc * mult + r) >> 32) >> e with the 64-bit r = 2^(31 + e) + output_offset * 2^(32 + e). */
typedef struct {
    int32_t bias, mult;
    int32_t r_lo; /* the low word, as its bit pattern */
    int32_t r_hi, e;
} tk_ch1_t;

/* --- the DSP operations, with portable equivalents --------------------------------------------- */

#if defined(__ARM_FEATURE_DSP)
#define tk_sx16(v) __sxtb16(v)
#define tk_sx16_odd(v) tk_sxtb16_odd(v)
#define tk_smlad_(a, b, acc) __smlad((a), (b), (acc))
#define tk_smlabb_(a, b, acc) __smlabb((a), (b), (acc))
#define tk_smlatt_(a, b, acc) __smlatt((a), (b), (acc))
#define tk_sat8(v) __ssat((v), 8)
#else
static inline int32_t tk_lo16(int32_t v) { return (int16_t)(uint16_t)((uint32_t)v & 0xffffu); }
static inline int32_t tk_hi16(int32_t v) { return (int16_t)(uint16_t)((uint32_t)v >> 16); }
static inline int32_t tk_pack16(int32_t lo, int32_t hi)
{
    return (int32_t)(((uint32_t)(uint16_t)lo) | ((uint32_t)(uint16_t)hi << 16));
}
static inline int32_t tk_sx16(int32_t v) { return tk_pack16((int8_t)(v & 0xff), (int8_t)((v >> 16) & 0xff)); }
static inline int32_t tk_sx16_odd(int32_t v) { return tk_pack16((int8_t)((v >> 8) & 0xff), (int8_t)((v >> 24) & 0xff)); }
static inline int32_t tk_smlad_(int32_t a, int32_t b, int32_t acc)
{
    return acc + tk_lo16(a) * tk_lo16(b) + tk_hi16(a) * tk_hi16(b);
}
static inline int32_t tk_smlabb_(int32_t a, int32_t b, int32_t acc) { return acc + tk_lo16(a) * tk_lo16(b); }
static inline int32_t tk_smlatt_(int32_t a, int32_t b, int32_t acc) { return acc + tk_hi16(a) * tk_hi16(b); }
static inline int32_t tk_sat8(int32_t v) { return v < -128 ? -128 : (v > 127 ? 127 : v); }
static inline int32_t tk_load4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
#endif

/* One depthwise tap of four channels: x holds the tap's 4 input bytes; `w` walks the weights, two words
 * a tap: channels (0,2) and (1,3) as halfword pairs. One asm block on the DSP path, weight load included:
 * left to itself, gcc hoists an unrolled window's weight loads out of the pixel loop into stack slots
 * and regroups the multiplies by accumulator, spilling the extended inputs. */
#if defined(__ARM_FEATURE_DSP)
#define TK_DW_TAP(x, w, a0, a1, a2, a3)                                                                  \
    do {                                                                                                \
        int32_t e_, o_, p_, q_;                                                                         \
        __asm__("ldrd %[p], %[q], [%[wp]], #8\n\t"                                                      \
                "sxtb16 %[e], %[xv]\n\t"                                                                 \
                "sxtb16 %[o], %[xv], ror #8\n\t"                                                         \
                "smlabb %[r0], %[e], %[p], %[r0]\n\t"                                                    \
                "smlatt %[r2], %[e], %[p], %[r2]\n\t"                                                    \
                "smlabb %[r1], %[o], %[q], %[r1]\n\t"                                                    \
                "smlatt %[r3], %[o], %[q], %[r3]"                                                         \
                : [r0] "+r"(a0), [r1] "+r"(a1), [r2] "+r"(a2), [r3] "+r"(a3), [wp] "+r"(w), [e] "=&r"(e_), \
                  [o] "=&r"(o_), [p] "=&r"(p_), [q] "=&r"(q_)                                           \
                : [xv] "r"(x)                                                                           \
                : "memory");                                                                            \
    } while (0)
#else
#define TK_DW_TAP(x, w, a0, a1, a2, a3)                                                                  \
    do {                                                                                                \
        const int32_t e_ = tk_sx16(x), o_ = tk_sx16_odd(x);                                             \
        a0 = tk_smlabb_(e_, (w)[0], a0);                                                                \
        a2 = tk_smlatt_(e_, (w)[0], a2);                                                                \
        a1 = tk_smlabb_(o_, (w)[1], a1);                                                                \
        a3 = tk_smlatt_(o_, (w)[1], a3);                                                                \
        (w) += 2;                                                                                       \
    } while (0)
#endif

/* --- requantization ---------------------------------------------------------------------------- */

/* tk_mbqm_fast(acc, mult, -e) + output_offset: y + 2^(e-1) - (y < 0), shifted, y = SRDHM(acc, mult).
 * On the DSP path one SMMLAR gives y + rnd (adding rnd << 32 before the rounding shift by 32 changes
 * nothing below it). The correction takes acc's sign, not y's: they differ only where y rounds to 0 from
 * a small negative acc, and there (rnd - 1) >> e = rnd >> e, since rnd's low e bits are 2^(e-1) (or 1 in
 * a constant channel, e = 1); the multiplier is positive (spec.ch_rows refuses others). */
TK_INLINE int32_t tk_rq2d(int32_t acc2, const tk_ch_t *c);
TK_INLINE int32_t tk_rq2(int32_t acc, const tk_ch_t *c)
{
    return tk_rq2d(acc * 2, c);
}

/* As tk_rq2 for an accumulator that is already doubled (depthwise weights and biases are stored x2,
 * which saves the shift SMMULR's doubling needs: |2 acc| < 2^31 as |acc| < 2^30). */
TK_INLINE int32_t tk_rq2d(int32_t acc2, const tk_ch_t *c)
{
#if defined(__ARM_FEATURE_DSP)
    int32_t t;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(t) : "r"(acc2), "r"(c->mult), "r"(c->rnd));
#else
    const int32_t t = (int32_t)(((int64_t)acc2 * (int64_t)c->mult + ((int64_t)1 << 31)) >> 32) + c->rnd;
#endif
    return (t + (acc2 >> 31)) >> c->e;
}

TK_INLINE int32_t tk_rq1(int32_t acc, const tk_ch1_t *c)
{
    const int64_t r = (int64_t)(((uint64_t)(uint32_t)c->r_hi << 32) | (uint32_t)c->r_lo);
    return (int32_t)(((int64_t)acc * c->mult + r) >> 32) >> c->e;
}

/* The activation clamp; lo/hi are constants, so the full int8 range is one SSAT. */
TK_INLINE int8_t tk_act(int32_t v, int32_t lo, int32_t hi)
{
    v = tk_sat8(v);
    if (lo > -128) {
        v = v < lo ? lo : v;
    }
    if (hi < 127) {
        v = v > hi ? hi : v;
    }
    return (int8_t)v;
}

/* --- matrix kernels: im2col'd halfword inputs x int8 weights ----------------------------------- */

/* Inputs are expanded once per pixel to halfwords, per group of 4 elements k0..k3 in the order
 * (k0,k2),(k1,k3) that SXTB16 gives the weights, so the inner loop sign-extends only the weights.
 * A pixel pair interleaves its two pixels per group: words [A02, A13, B02, B13]. Weights (int8, read as words)
 * for a pair of output channels interleave per group too: the 4 bytes of channel 0, then channel 1's. K is padded to
 * a whole number of groups with zero weights and zero inputs. */

/* 2 pixels x 2 channels: each weight word feeds four SMLADs, each input word two. On the DSP path one
 * asm block a group, so that the inputs load as two LDRDs and the 12 live values stay in registers. */
TK_INLINE void tk_mm2x2(const int32_t *xb, const int32_t *w, int32_t groups, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], b0 = acc[2], b1 = acc[3];
#if defined(__ARM_FEATURE_DSP)
#define TK_MM2X2_GROUP                                                                                   \
    "ldrd %[xb02], %[xb13], [%[px], #8]\n\t"                                                             \
    "ldrd %[xa02], %[xa13], [%[px]], #16\n\t"                                                            \
    "ldr %[v], [%[pw]], #4\n\t"                                                                          \
    "sxtb16 %[e], %[v]\n\t"                                                                              \
    "sxtb16 %[v], %[v], ror #8\n\t"                                                                      \
    "smlad %[a0], %[xa02], %[e], %[a0]\n\t"                                                              \
    "smlad %[b0], %[xb02], %[e], %[b0]\n\t"                                                              \
    "smlad %[a0], %[xa13], %[v], %[a0]\n\t"                                                              \
    "smlad %[b0], %[xb13], %[v], %[b0]\n\t"                                                              \
    "ldr %[v], [%[pw]], #4\n\t"                                                                          \
    "sxtb16 %[e], %[v]\n\t"                                                                              \
    "sxtb16 %[v], %[v], ror #8\n\t"                                                                      \
    "smlad %[a1], %[xa02], %[e], %[a1]\n\t"                                                              \
    "smlad %[b1], %[xb02], %[e], %[b1]\n\t"                                                              \
    "smlad %[a1], %[xa13], %[v], %[a1]\n\t"                                                              \
    "smlad %[b1], %[xb13], %[v], %[b1]\n\t"
#define TK_MM2X2_OUTPUTS                                                                                \
    : [a0] "+r"(a0), [a1] "+r"(a1), [b0] "+r"(b0), [b1] "+r"(b1), [px] "+r"(xb), [pw] "+r"(w),              \
      [xa02] "=&r"(xa02), [xa13] "=&r"(xa13), [xb02] "=&r"(xb02), [xb13] "=&r"(xb13), [v] "=&r"(v), [e] "=&r"(e)
#define TK_MM2X2_OPERANDS TK_MM2X2_OUTPUTS : [end] "r"(end) : "memory", "cc"
#define TK_MM2X2_STRAIGHT TK_MM2X2_OUTPUTS : : "memory", "cc"
    const int32_t *end = xb + 4 * groups;
    int32_t xa02, xa13, xb02, xb13, v, e;
    /* the loop itself in asm too (gcc's own unrolling renames the accumulators and copies them back),
     * unrolled as far as the group count allows */
    if (groups == 2) { /* short dot products (pointwise on 8 channels): straight code, no loop */
        __asm__(TK_MM2X2_GROUP TK_MM2X2_GROUP TK_MM2X2_STRAIGHT);
    } else if (groups == 4) {
        __asm__(TK_MM2X2_GROUP TK_MM2X2_GROUP TK_MM2X2_GROUP TK_MM2X2_GROUP TK_MM2X2_STRAIGHT);
    } else if (groups % 4 == 0) {
        __asm__("1:\n\t" TK_MM2X2_GROUP TK_MM2X2_GROUP TK_MM2X2_GROUP TK_MM2X2_GROUP "cmp %[px], %[end]\n\t"
                "bne 1b"
                TK_MM2X2_OPERANDS);
    } else if (groups % 2 == 0) {
        __asm__("1:\n\t" TK_MM2X2_GROUP TK_MM2X2_GROUP "cmp %[px], %[end]\n\t"
                "bne 1b"
                TK_MM2X2_OPERANDS);
    } else {
        __asm__("1:\n\t" TK_MM2X2_GROUP "cmp %[px], %[end]\n\t"
                "bne 1b"
                TK_MM2X2_OPERANDS);
    }
#undef TK_MM2X2_GROUP
#undef TK_MM2X2_OPERANDS
#undef TK_MM2X2_OUTPUTS
#undef TK_MM2X2_STRAIGHT
#else
    for (int32_t g = 0; g < groups; g++, xb += 4, w += 2) {
        const int32_t xa02 = xb[0], xa13 = xb[1], xb02 = xb[2], xb13 = xb[3];
        int32_t v = w[0];
        int32_t ve = tk_sx16(v), vo = tk_sx16_odd(v);
        a0 = tk_smlad_(xa02, ve, a0);
        a0 = tk_smlad_(xa13, vo, a0);
        b0 = tk_smlad_(xb02, ve, b0);
        b0 = tk_smlad_(xb13, vo, b0);
        v = w[1];
        ve = tk_sx16(v);
        vo = tk_sx16_odd(v);
        a1 = tk_smlad_(xa02, ve, a1);
        a1 = tk_smlad_(xa13, vo, a1);
        b1 = tk_smlad_(xb02, ve, b1);
        b1 = tk_smlad_(xb13, vo, b1);
    }
#endif
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = b0;
    acc[3] = b1;
}

/* 1 pixel x 2 channels; `xstride` words from one group of the pixel to the next (2 alone, 4 in a pair). */
TK_INLINE void tk_mm1x2(const int32_t *xb, int32_t xstride, const int32_t *w, int32_t groups, int32_t acc[2])
{
    int32_t a0 = acc[0], a1 = acc[1];
    for (int32_t g = 0; g < groups; g++, xb += xstride, w += 2) {
        const int32_t x02 = xb[0], x13 = xb[1];
        const int32_t v0 = w[0], v1 = w[1];
        a0 = tk_smlad_(x02, tk_sx16(v0), a0);
        a0 = tk_smlad_(x13, tk_sx16_odd(v0), a0);
        a1 = tk_smlad_(x02, tk_sx16(v1), a1);
        a1 = tk_smlad_(x13, tk_sx16_odd(v1), a1);
    }
    acc[0] = a0;
    acc[1] = a1;
}

/* The same products with weights widened to halfwords at generation time ("wide" layers, where the
 * code generator's flash budget allows twice the weight bytes): per group a channel's weights are two
 * words, (k0,k2) and (k1,k3), so the inner loop does no sign extension at all. In CONV_2D layers they
 * are doubled (|2w| <= 256 still fits), as are the biases, which spares the requantization a shift. */
TK_INLINE void tk_mm2x2_w16(const int32_t *xb, const int32_t *w, int32_t groups, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], b0 = acc[2], b1 = acc[3];
#if defined(__ARM_FEATURE_DSP)
    const int32_t *end = xb + 4 * groups;
    int32_t xa02, xa13, xb02, xb13, p, q;
#define TK_MM2X2W_GROUP                                                                                  \
    "ldrd %[xb02], %[xb13], [%[px], #8]\n\t"                                                             \
    "ldrd %[xa02], %[xa13], [%[px]], #16\n\t"                                                            \
    "ldrd %[p], %[q], [%[pw]], #8\n\t"                                                                   \
    "smlad %[a0], %[xa02], %[p], %[a0]\n\t"                                                              \
    "smlad %[b0], %[xb02], %[p], %[b0]\n\t"                                                              \
    "smlad %[a0], %[xa13], %[q], %[a0]\n\t"                                                              \
    "smlad %[b0], %[xb13], %[q], %[b0]\n\t"                                                              \
    "ldrd %[p], %[q], [%[pw]], #8\n\t"                                                                   \
    "smlad %[a1], %[xa02], %[p], %[a1]\n\t"                                                              \
    "smlad %[b1], %[xb02], %[p], %[b1]\n\t"                                                              \
    "smlad %[a1], %[xa13], %[q], %[a1]\n\t"                                                              \
    "smlad %[b1], %[xb13], %[q], %[b1]\n\t"
#define TK_MM2X2W_OUTPUTS                                                                               \
    : [a0] "+r"(a0), [a1] "+r"(a1), [b0] "+r"(b0), [b1] "+r"(b1), [px] "+r"(xb), [pw] "+r"(w),              \
      [xa02] "=&r"(xa02), [xa13] "=&r"(xa13), [xb02] "=&r"(xb02), [xb13] "=&r"(xb13), [p] "=&r"(p), [q] "=&r"(q)
#define TK_MM2X2W_OPERANDS TK_MM2X2W_OUTPUTS : [end] "r"(end) : "memory", "cc"
#define TK_MM2X2W_STRAIGHT TK_MM2X2W_OUTPUTS : : "memory", "cc"
    /* unrolled as far as the group count allows: the loop's compare and branch are 2 of 14 per group */
    if (groups == 2) { /* short dot products (pointwise on 8 channels): straight code, no loop */
        __asm__(TK_MM2X2W_GROUP TK_MM2X2W_GROUP TK_MM2X2W_STRAIGHT);
    } else if (groups == 4) {
        __asm__(TK_MM2X2W_GROUP TK_MM2X2W_GROUP TK_MM2X2W_GROUP TK_MM2X2W_GROUP TK_MM2X2W_STRAIGHT);
    } else if (groups % 4 == 0) {
        __asm__("1:\n\t" TK_MM2X2W_GROUP TK_MM2X2W_GROUP TK_MM2X2W_GROUP TK_MM2X2W_GROUP
                "cmp %[px], %[end]\n\t"
                "bne 1b" TK_MM2X2W_OPERANDS);
    } else if (groups % 2 == 0) {
        __asm__("1:\n\t" TK_MM2X2W_GROUP TK_MM2X2W_GROUP "cmp %[px], %[end]\n\t"
                "bne 1b" TK_MM2X2W_OPERANDS);
    } else {
        __asm__("1:\n\t" TK_MM2X2W_GROUP "cmp %[px], %[end]\n\t"
                "bne 1b" TK_MM2X2W_OPERANDS);
    }
#undef TK_MM2X2W_GROUP
#undef TK_MM2X2W_OPERANDS
#undef TK_MM2X2W_OUTPUTS
#undef TK_MM2X2W_STRAIGHT
#else
    for (int32_t g = 0; g < groups; g++, xb += 4, w += 4) {
        a0 = tk_smlad_(xb[1], w[1], tk_smlad_(xb[0], w[0], a0));
        b0 = tk_smlad_(xb[3], w[1], tk_smlad_(xb[2], w[0], b0));
        a1 = tk_smlad_(xb[1], w[3], tk_smlad_(xb[0], w[2], a1));
        b1 = tk_smlad_(xb[3], w[3], tk_smlad_(xb[2], w[2], b1));
    }
#endif
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = b0;
    acc[3] = b1;
}

TK_INLINE void tk_mm1x2_w16(const int32_t *xb, int32_t xstride, const int32_t *w, int32_t groups, int32_t acc[2])
{
    int32_t a0 = acc[0], a1 = acc[1];
    for (int32_t g = 0; g < groups; g++, xb += xstride, w += 4) {
        a0 = tk_smlad_(xb[1], w[1], tk_smlad_(xb[0], w[0], a0));
        a1 = tk_smlad_(xb[1], w[3], tk_smlad_(xb[0], w[2], a1));
    }
    acc[0] = a0;
    acc[1] = a1;
}

/* 1 pixel x 4 channels, wide weights (fully connected layers: each weight is used once, so the input
 * words are what can be shared). Weights per group of 4 channels: 8 words. */
TK_INLINE void tk_mm1x4_w16(const int32_t *xb, const int32_t *w, int32_t groups, int32_t acc[4])
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
#if defined(__ARM_FEATURE_DSP)
    const int32_t *end = xb + 2 * groups;
    int32_t x02, x13, p, q;
    __asm__("1:\n\t"
            "ldrd %[x02], %[x13], [%[px]], #8\n\t"
            "ldrd %[p], %[q], [%[pw]], #8\n\t"
            "smlad %[a0], %[x02], %[p], %[a0]\n\t"
            "smlad %[a0], %[x13], %[q], %[a0]\n\t"
            "ldrd %[p], %[q], [%[pw]], #8\n\t"
            "smlad %[a1], %[x02], %[p], %[a1]\n\t"
            "smlad %[a1], %[x13], %[q], %[a1]\n\t"
            "ldrd %[p], %[q], [%[pw]], #8\n\t"
            "smlad %[a2], %[x02], %[p], %[a2]\n\t"
            "smlad %[a2], %[x13], %[q], %[a2]\n\t"
            "ldrd %[p], %[q], [%[pw]], #8\n\t"
            "smlad %[a3], %[x02], %[p], %[a3]\n\t"
            "smlad %[a3], %[x13], %[q], %[a3]\n\t"
            "cmp %[px], %[end]\n\t"
            "bne 1b"
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [px] "+r"(xb), [pw] "+r"(w),
              [x02] "=&r"(x02), [x13] "=&r"(x13), [p] "=&r"(p), [q] "=&r"(q)
            : [end] "r"(end)
            : "memory", "cc");
#else
    for (int32_t g = 0; g < groups; g++, xb += 2, w += 8) {
        a0 = tk_smlad_(xb[1], w[1], tk_smlad_(xb[0], w[0], a0));
        a1 = tk_smlad_(xb[1], w[3], tk_smlad_(xb[0], w[2], a1));
        a2 = tk_smlad_(xb[1], w[5], tk_smlad_(xb[0], w[4], a2));
        a3 = tk_smlad_(xb[1], w[7], tk_smlad_(xb[0], w[6], a3));
    }
#endif
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* Writes output pixel (oy, ox)'s receptive field into slot `slot` (0 or 1) of a buffer whose groups are
 * `gstride` words apart: input elements in [KH][KW][IC] order, taps outside the input as the raw zero
 * point (the folded bias expects it), the K..4G tail as 0. INSIDE: every window is in bounds. */
TK_INLINE void tk_im2col(int32_t *xb, int32_t gstride, int32_t slot, const int8_t *in, int32_t oy, int32_t ox,
                         int32_t IH, int32_t IW, int32_t IC, int32_t KH, int32_t KW, int32_t SH, int32_t SW,
                         int32_t PT, int32_t PL, int32_t INSIDE, int32_t zp, int32_t RIN)
{
    const int32_t iy0 = oy * SH - PT, ix0 = ox * SW - PL;
    if (IC % 4 == 0) {
        const int32_t zpw = (int32_t)((uint32_t)(uint8_t)zp * 0x01010101u);
        const int32_t zpe = tk_sx16(zpw), zpo = tk_sx16_odd(zpw);
        int32_t *d = xb + 2 * slot;
        for (int32_t ky = 0; ky < KH; ky++) {
            const int32_t iy = iy0 + ky;
            const int row_in = INSIDE || (iy >= 0 && iy < IH);
            for (int32_t kx = 0; kx < KW; kx++) {
                const int32_t ix = ix0 + kx;
                const int8_t *s = TK_ROW(in, iy, RIN, IW * IC) + ix * IC;
                if (row_in && (INSIDE || (ix >= 0 && ix < IW))) {
                    for (int32_t c = 0; c < IC; c += 4, d += gstride) {
                        const int32_t v = tk_load4(s + c);
                        d[0] = tk_sx16(v);
                        d[1] = tk_sx16_odd(v);
                    }
                } else {
                    for (int32_t c = 0; c < IC; c += 4, d += gstride) {
                        d[0] = zpe;
                        d[1] = zpo;
                    }
                }
            }
        }
        return;
    }
    /* Channel counts that are not a multiple of 4 (a first layer on 1 or 3 channels): element by element.
     * Element j of the field goes to halfword perm[j % 4] of its group. */
    typedef int16_t tk_half_alias __attribute__((may_alias)); /* xb is read back as int32_t words */
    tk_half_alias *h = (tk_half_alias *)(void *)(xb + 2 * slot);
    const int32_t hs = 2 * gstride; /* halfwords from one group to the next */
    /* unrolled whole (the field is small: a few dozen elements), so every index is a constant */
    int32_t j = 0;
#pragma GCC unroll 16
    for (int32_t ky = 0; ky < KH; ky++) {
        const int32_t iy = iy0 + ky;
        const int row_in = INSIDE || (iy >= 0 && iy < IH);
#pragma GCC unroll 16
        for (int32_t kx = 0; kx < KW; kx++) {
            const int32_t ix = ix0 + kx;
            const int ok = row_in && (INSIDE || (ix >= 0 && ix < IW));
            const int8_t *s = TK_ROW(in, iy, RIN, IW * IC) + ix * IC;
#pragma GCC unroll 4
            for (int32_t c = 0; c < IC; c++, j++) {
                h[(j >> 2) * hs + ((j & 1) << 1) + ((j >> 1) & 1)] = (int16_t)(ok ? s[c] : zp);
            }
        }
    }
    for (; j & 3; j++) {
        h[(j >> 2) * hs + ((j & 1) << 1) + ((j >> 1) & 1)] = 0;
    }
}

/* CONV_2D (dilation 1) and pointwise layers: pixel pairs through tk_mm2x2, an odd last pixel through
 * tk_mm1x2. `xb` holds one pixel pair's fields (4 * G words). Weights: pairs of output channels as
 * described above, an odd last channel paired with zeros; `ch` has OC entries (plus one unused). */
TK_INLINE void tk_conv_spec(const int8_t *in, int8_t *out, const int32_t *weights, const tk_ch_t *ch, int32_t *xb,
                            int32_t IH, int32_t IW, int32_t IC, int32_t OH, int32_t OW, int32_t OC, int32_t KH,
                            int32_t KW, int32_t SH, int32_t SW, int32_t PT, int32_t PL, int32_t INSIDE, int32_t zp,
                            int32_t lo, int32_t hi, int32_t WIDE, int32_t RIN, int32_t ROUT, int32_t OY0,
                            int32_t OY1)
{
    /* output rows [OY0, OY1): a whole layer, or one row of a fused group (ROUT > 0 takes one row a call) */
    const int32_t G = (KH * KW * IC + 3) / 4, npix = (OY1 - OY0) * OW;
    int32_t oy = OY0, ox = 0;
    (void)OH; /* the rows come as [OY0, OY1) */
    out = TK_ROW(out, OY0, ROUT, OW * OC);
/* wide weights and their biases are stored doubled, as depthwise's (tk_rq2d) */
#define TK_CONV_RQ(a, c) (WIDE ? tk_rq2d((a), (c)) : tk_rq2((a), (c)))
    for (int32_t p = 0; p < npix; p += 2, out += 2 * OC) {
        tk_im2col(xb, 4, 0, in, oy, ox, IH, IW, IC, KH, KW, SH, SW, PT, PL, INSIDE, zp, RIN);
        const int pair = p + 1 < npix;
        if (++ox == OW) {
            ox = 0;
            oy++;
        }
        if (pair) {
            tk_im2col(xb, 4, 1, in, oy, ox, IH, IW, IC, KH, KW, SH, SW, PT, PL, INSIDE, zp, RIN);
            if (++ox == OW) {
                ox = 0;
                oy++;
            }
        }
        const int32_t *w = weights;
        const tk_ch_t *c = ch;
        for (int32_t oc = 0; oc < OC; oc += 2, c += 2, w += (WIDE ? 4 : 2) * G) {
            const int two = OC % 2 == 0 || oc + 1 < OC;
            const tk_ch_t *c0 = &c[0], *c1 = &c[1];
            if (pair) {
                int32_t acc[4] = {c0->bias, c1->bias, c0->bias, c1->bias};
                if (WIDE) {
                    tk_mm2x2_w16(xb, w, G, acc);
                } else {
                    tk_mm2x2(xb, w, G, acc);
                }
                /* copied before the first store: an int8_t store may alias them, and gcc would reload
                 * both channels' constants for the second pixel */
                const tk_ch_t q0 = *c0, q1 = *c1;
                out[oc] = tk_act(TK_CONV_RQ(acc[0], &q0), lo, hi);
                out[OC + oc] = tk_act(TK_CONV_RQ(acc[2], &q0), lo, hi);
                if (two) {
                    out[oc + 1] = tk_act(TK_CONV_RQ(acc[1], &q1), lo, hi);
                    out[OC + oc + 1] = tk_act(TK_CONV_RQ(acc[3], &q1), lo, hi);
                }
            } else {
                int32_t acc[2] = {c0->bias, c1->bias};
                if (WIDE) {
                    tk_mm1x2_w16(xb, 4, w, G, acc);
                } else {
                    tk_mm1x2(xb, 4, w, G, acc);
                }
                out[oc] = tk_act(TK_CONV_RQ(acc[0], c0), lo, hi);
                if (two) {
                    out[oc + 1] = tk_act(TK_CONV_RQ(acc[1], c1), lo, hi);
                }
            }
        }
    }
#undef TK_CONV_RQ
}

/* FULLY_CONNECTED, batch by batch: one row expanded into `xb` (2 * G words), then channel pairs. */
TK_INLINE void tk_fc_spec(const int8_t *in, int8_t *out, const int32_t *weights, const tk_ch1_t *ch, int32_t *xb,
                          int32_t B, int32_t IN, int32_t OUT, int32_t lo, int32_t hi, int32_t WIDE)
{
    const int32_t G = (IN + 3) / 4;
    for (int32_t b = 0; b < B; b++, in += IN, out += OUT) {
        tk_im2col(xb, 2, 0, in, 0, 0, 1, 1, IN, 1, 1, 1, 1, 0, 0, 1, 0, 0);
        if (WIDE) { /* channels in fours (the last group padded with zero weights), 8 G words a group */
            const int32_t *w = weights;
            const tk_ch1_t *c = ch;
            for (int32_t oc = 0; oc < OUT; oc += 4, c += 4, w += 8 * G) {
                int32_t acc[4] = {c[0].bias, c[1].bias, c[2].bias, c[3].bias};
                tk_mm1x4_w16(xb, w, G, acc);
                for (int32_t j = 0; j < 4; j++) {
                    if (OUT % 4 == 0 || oc + j < OUT) {
                        out[oc + j] = tk_act(tk_rq1(acc[j], &c[j]), lo, hi);
                    }
                }
            }
            continue;
        }
        const int32_t *w = weights;
        const tk_ch1_t *c = ch;
        for (int32_t oc = 0; oc < OUT; oc += 2, c += 2, w += 2 * G) {
            int32_t acc[2] = {c[0].bias, c[1].bias};
            tk_mm1x2(xb, 2, w, G, acc);
            out[oc] = tk_act(tk_rq1(acc[0], &c[0]), lo, hi);
            if (OUT % 2 == 0 || oc + 1 < OUT) {
                out[oc + 1] = tk_act(tk_rq1(acc[1], &c[1]), lo, hi);
            }
        }
    }
}

/* --- ADD of two tensors of one shape, through a table per input ------------------------------- */

/* TFLite rescales each input to a common scale (offset, left shift, multiplier, right shift): a function
 * of the byte alone, so the generator tabulates it, 256 words per input indexed by the signed byte. With
 * FAST it has proven |sum| < 2^30 and stored the values doubled: the output's SRDHM is one SMMULR and its
 * rounding shift (by E = -shift) the short form. Otherwise the sum takes the general tk_mbqm. */
TK_INLINE void tk_add_lut(const int32_t *la, const int32_t *lb, const int8_t *a, const int8_t *b, int8_t *out,
                          int32_t n, int32_t mult, int32_t shift, int32_t zp, int32_t lo, int32_t hi, int32_t FAST)
{
    for (int32_t i = 0; i < n; i++) {
        const int32_t sum = (int32_t)((uint32_t)la[a[i]] + (uint32_t)lb[b[i]]);
        int32_t y;
        if (FAST) {
#if defined(__ARM_FEATURE_DSP)
            __asm__("smmulr %0, %1, %2" : "=r"(y) : "r"(sum), "r"(mult));
#else
            y = (int32_t)(((int64_t)sum * (int64_t)mult + ((int64_t)1 << 31)) >> 32);
#endif
            if (shift < 0) {
                y = (y + (int32_t)((uint32_t)1 << (-shift - 1)) + (y >> 31)) >> -shift;
            }
        } else {
            y = tk_mbqm(sum, mult, shift);
        }
        out[i] = tk_act(y + zp, lo, hi);
    }
}

/* --- depthwise (multiplier 1), four channels at a time ----------------------------------------- */

/* Weights pre-extended to halfwords and doubled (as the biases in `ch`: see tk_rq2d): per group of 4
 * channels, per tap, (c0,c2),(c1,c3) as two words, the pairs SXTB16 gives the input. Channels past the
 * last whole group run one at a time. Windows inside the input read taps at constant offsets; border
 * windows read through per-tap pointers (`xp`, KH * KW of them), a tap outside the input pointing at
 * `zrow` (C bytes of the raw zero point). The layer's function declares both with literal sizes: a
 * variable-length array here would cost gcc a frame-pointer register (on vww_96 1.1 % of the count). */
#define TK_DW_TAPS_MAX 49

/* Four channels' doubled accumulators requantized and stored. */
TK_INLINE void tk_dw_store4(int32_t a0, int32_t a1, int32_t a2, int32_t a3, const tk_ch_t *ch, int8_t *y,
                            int32_t lo, int32_t hi)
{
    y[0] = tk_act(tk_rq2d(a0, &ch[0]), lo, hi);
    y[1] = tk_act(tk_rq2d(a1, &ch[1]), lo, hi);
    y[2] = tk_act(tk_rq2d(a2, &ch[2]), lo, hi);
    y[3] = tk_act(tk_rq2d(a3, &ch[3]), lo, hi);
}

TK_INLINE void tk_dw_group(const int8_t *const *xp, int32_t c, const int32_t *w, const tk_ch_t *ch, int8_t *y,
                           int32_t TAPS, int32_t lo, int32_t hi)
{
    int32_t a0 = ch[0].bias, a1 = ch[1].bias, a2 = ch[2].bias, a3 = ch[3].bias;
#pragma GCC unroll 49
    for (int32_t t = 0; t < TAPS; t++) {
        TK_DW_TAP(tk_load4(xp[t] + c), w, a0, a1, a2, a3);
    }
    tk_dw_store4(a0, a1, a2, a3, ch, y, lo, hi);
}

TK_INLINE void tk_dw_inside(const int8_t *base, int32_t c, const int32_t *w, const tk_ch_t *ch, int8_t *y,
                            int32_t IW, int32_t C, int32_t KH, int32_t KW, int32_t lo, int32_t hi)
{
    int32_t a0 = ch[0].bias, a1 = ch[1].bias, a2 = ch[2].bias, a3 = ch[3].bias;
    base += c;
#pragma GCC unroll 49
    for (int32_t t = 0; t < KH * KW; t++) {
        TK_DW_TAP(tk_load4(base + ((t / KW) * IW + t % KW) * C), w, a0, a1, a2, a3);
    }
    tk_dw_store4(a0, a1, a2, a3, ch, y, lo, hi);
}

/* `wt` holds the C % 4 last channels' weights as int8 [tap][C % 4]. */
TK_INLINE void tk_dw_spec(const int8_t *in, int8_t *out0, const int32_t *w, const int8_t *wt, const tk_ch_t *ch,
                          int8_t *zrow, const int8_t **xp, int32_t IH, int32_t IW, int32_t C, int32_t OH,
                          int32_t OW, int32_t KH, int32_t KW, int32_t SH, int32_t SW, int32_t PT, int32_t PL,
                          int32_t zp, int32_t lo, int32_t hi)
{
    const int32_t TAPS = KH * KW, C4 = C & ~3;
    int8_t *out = out0;
    memset(zrow, (int)(int8_t)zp, (size_t)C);
    for (int32_t oy = 0; oy < OH; oy++) {
        const int32_t iy0 = oy * SH - PT;
        const int rows_in = iy0 >= 0 && iy0 + KH <= IH;
        for (int32_t ox = 0; ox < OW; ox++, out += C) {
            const int32_t ix0 = ox * SW - PL;
            const int inside = rows_in && ix0 >= 0 && ix0 + KW <= IW;
            if (!inside || C4 < C) { /* per-tap pointers: borders, and the channels past the groups */
                for (int32_t ky = 0, t = 0; ky < KH; ky++) {
                    const int32_t iy = iy0 + ky;
                    for (int32_t kx = 0; kx < KW; kx++, t++) {
                        const int32_t ix = ix0 + kx;
                        const int ok = iy >= 0 && iy < IH && ix >= 0 && ix < IW;
                        xp[t] = ok ? in + (iy * IW + ix) * C : zrow;
                    }
                }
            }
            if (inside) {
                const int8_t *base = in + (iy0 * IW + ix0) * C;
                for (int32_t c = 0; c < C4; c += 4) {
                    tk_dw_inside(base, c, w + (c / 4) * 2 * TAPS, ch + c, out + c, IW, C, KH, KW, lo, hi);
                }
            } else {
                for (int32_t c = 0; c < C4; c += 4) {
                    tk_dw_group(xp, c, w + (c / 4) * 2 * TAPS, ch + c, out + c, TAPS, lo, hi);
                }
            }
            for (int32_t c = C4; c < C; c++) {
                int32_t acc = ch[c].bias;
                for (int32_t t = 0; t < TAPS; t++) {
                    acc += 2 * xp[t][c] * wt[t * (C - C4) + c - C4];
                }
                out[c] = tk_act(tk_rq2d(acc, &ch[c]), lo, hi);
            }
        }
    }
}


/* One output row `oy` of a depthwise layer in a fused group: the input rows from a ring of RIN rows
 * (or a whole tensor, RIN 0), the row written at `out`. A ring read here is mirrored (tk_ring_mirror):
 * its first KH - 1 slots are copied after its last, so any KH consecutive rows are contiguous and
 * inside windows take tk_dw_inside's constant tap offsets, as over a whole tensor. The pixel loop repeats
 * tk_dw_spec's: sharing it through one inline helper cost the whole-layer form 1.5-1.7 % (kws, vww). */
TK_INLINE void tk_dw_spec_row(const int8_t *in, int8_t *out, const int32_t *w, const int8_t *wt, const tk_ch_t *ch,
                              int8_t *zrow, const int8_t **xp, int32_t IH, int32_t IW, int32_t C, int32_t OW,
                              int32_t KH, int32_t KW, int32_t SH, int32_t SW, int32_t PT, int32_t PL, int32_t zp,
                              int32_t lo, int32_t hi, int32_t RIN, int32_t oy)
{
    const int32_t TAPS = KH * KW, C4 = C & ~3;
    memset(zrow, (int)(int8_t)zp, (size_t)C);
    const int32_t iy0 = oy * SH - PT;
    const int rows_in = iy0 >= 0 && iy0 + KH <= IH;
    const int8_t *top = rows_in ? TK_ROW(in, iy0, RIN, IW * C) : 0; /* the window's rows, contiguous */
    for (int32_t ox = 0; ox < OW; ox++, out += C) {
        const int32_t ix0 = ox * SW - PL;
        const int inside = rows_in && ix0 >= 0 && ix0 + KW <= IW;
        if (!inside || C4 < C) {
            for (int32_t ky = 0, t = 0; ky < KH; ky++) {
                const int32_t iy = iy0 + ky;
                for (int32_t kx = 0; kx < KW; kx++, t++) {
                    const int32_t ix = ix0 + kx;
                    const int ok = iy >= 0 && iy < IH && ix >= 0 && ix < IW;
                    xp[t] = ok ? TK_ROW(in, iy, RIN, IW * C) + ix * C : zrow;
                }
            }
        }
        if (inside) {
            const int8_t *base = top + ix0 * C;
            for (int32_t c = 0; c < C4; c += 4) {
                tk_dw_inside(base, c, w + (c / 4) * 2 * TAPS, ch + c, out + c, IW, C, KH, KW, lo, hi);
            }
        } else {
            for (int32_t c = 0; c < C4; c += 4) {
                tk_dw_group(xp, c, w + (c / 4) * 2 * TAPS, ch + c, out + c, TAPS, lo, hi);
            }
        }
        for (int32_t c = C4; c < C; c++) {
            int32_t acc = ch[c].bias;
            for (int32_t t = 0; t < TAPS; t++) {
                acc += 2 * xp[t][c] * wt[t * (C - C4) + c - C4];
            }
            out[c] = tk_act(tk_rq2d(acc, &ch[c]), lo, hi);
        }
    }
}

/* --- depthwise (multiplier 1), one channel at a time over halfword rows ------------------------ */

/* SMLAD sums two products into one accumulator, so in a depthwise layer it must pair two taps of one
 * channel: in NHWC they are C bytes apart. These kernels therefore widen, per channel, the KH input rows
 * a window reaches into halfword rows with the padding written in as the raw zero point (the folded bias
 * counts a padded tap as the zero point, see tk_conv.c), so every window is inside and two adjacent taps
 * are one (unaligned) word load. Weights per channel, per kernel row, are halfword pairs doubled as
 * tk_rq2d wants, an odd last tap paired with 0 (the row holds one halfword more, so that load stays in
 * it). Outputs go four at a time: neighbouring windows share loads, and the channel's requantization
 * constants stay in registers. */

/* One halfword row of a channel: n values of the input C bytes apart from column PL on, the zero point
 * elsewhere. */
TK_INLINE void tk_dwp_fill(int16_t *d, const int8_t *src, int32_t PW, int32_t PL, int32_t n, int32_t C, int32_t zp)
{
    for (int32_t i = 0; i < PL && i < PW; i++) {
        d[i] = (int16_t)zp;
    }
#pragma GCC unroll 4
    for (int32_t i = 0; i < n; i++) {
        d[PL + i] = src[i * C];
    }
    for (int32_t i = PL + n; i < PW; i++) {
        d[i] = (int16_t)zp;
    }
}

/* Row `iy` of channel c into d, from a whole tensor or a ring (RIN rows; 0: whole); a row outside the
 * input is all zero point. */
TK_INLINE void tk_dwp_row(int16_t *d, const int8_t *in, int32_t iy, int32_t c, int32_t IH, int32_t IW, int32_t C,
                          int32_t PW, int32_t PL, int32_t zp, int32_t RIN)
{
    const int32_t n = IW < PW - PL ? IW : PW - PL; /* columns a window can reach */
    if (iy < 0 || iy >= IH) {
        for (int32_t i = 0; i < PW; i++) {
            d[i] = (int16_t)zp;
        }
    } else {
        tk_dwp_fill(d, TK_ROW(in, iy, RIN, IW * C) + c, PW, PL, n, C, zp);
    }
}

TK_INLINE int32_t tk_ld2(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* NB outputs of one channel: x is the window of the first, in KH rows PW halfwords apart. */
TK_INLINE void tk_dwp_block(const int16_t *x, const int32_t *wc, const tk_ch_t *chc, int8_t *y, int32_t NB,
                            int32_t KH, int32_t KW, int32_t SW, int32_t PW, int32_t C, int32_t lo, int32_t hi)
{
    const int32_t KP = (KW + 1) / 2;
    int32_t a[4] = {chc->bias, chc->bias, chc->bias, chc->bias};
#pragma GCC unroll 7
    for (int32_t ky = 0; ky < KH; ky++) {
#pragma GCC unroll 4
        for (int32_t k = 0; k < KP; k++) {
            const int32_t wv = wc[ky * KP + k];
#pragma GCC unroll 4
            for (int32_t j = 0; j < NB; j++) {
                a[j] = tk_smlad_(tk_ld2(x + ky * PW + j * SW + 2 * k), wv, a[j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int32_t j = 0; j < NB; j++) {
        y[j * C] = tk_act(tk_rq2d(a[j], chc), lo, hi);
    }
}

/* One output row of channel c from its KH rows at x (outputs C bytes apart from y). */
TK_INLINE void tk_dwp_outrow(const int16_t *x, const int32_t *wc, const tk_ch_t *chc, int8_t *y, int32_t OW,
                             int32_t KH, int32_t KW, int32_t SW, int32_t PW, int32_t C, int32_t lo, int32_t hi)
{
    const tk_ch_t q = *chc; /* a local copy: the stores through int8_t pointers cannot alias it */
    int32_t ox = 0;
    for (; ox + 4 <= OW; ox += 4) {
        tk_dwp_block(x + ox * SW, wc, &q, y + ox * C, 4, KH, KW, SW, PW, C, lo, hi);
    }
    if (OW % 4 >= 2) {
        tk_dwp_block(x + ox * SW, wc, &q, y + ox * C, 2, KH, KW, SW, PW, C, lo, hi);
        ox += 2;
    }
    if (OW % 2) {
        tk_dwp_block(x + ox * SW, wc, &q, y + ox * C, 1, KH, KW, SW, PW, C, lo, hi);
    }
}

/* The halfword row length: the columns the last window reaches, rounded up to pairs. */
#define TK_DWP_PW(OW, KW, SW) (((OW) - 1) * (SW) + 2 * (((KW) + 1) / 2))

/* A whole layer, channel by channel. A channel's rows form a ring of KH slots whose first KH - 1 are
 * mirrored after the last, so the KH rows of any window are contiguous; each input row is widened once
 * per channel. `buf` holds (2 KH - 1) rows of TK_DWP_PW halfwords (KH rows for tk_dwp_spec_row), sized by
 * the layer's function as tk_dw_spec's buffers are. */
TK_INLINE void tk_dwp_spec(const int8_t *in, int8_t *out, const int32_t *w, const tk_ch_t *ch, int16_t *buf,
                           int32_t IH, int32_t IW, int32_t C, int32_t OH, int32_t OW, int32_t KH, int32_t KW,
                           int32_t SH, int32_t SW, int32_t PT, int32_t PL, int32_t zp, int32_t lo, int32_t hi)
{
    const int32_t PW = TK_DWP_PW(OW, KW, SW), KP = (KW + 1) / 2;
    for (int32_t c = 0; c < C; c++) {
        int32_t next = 0; /* the first padded-input row not yet in the ring */
        for (int32_t oy = 0; oy < OH; oy++) {
            const int32_t v0 = oy * SH;
            for (int32_t v = next > v0 ? next : v0; v < v0 + KH; v++) {
                int16_t *slot = buf + (v % KH) * PW;
                tk_dwp_row(slot, in, v - PT, c, IH, IW, C, PW, PL, zp, 0);
                if (v % KH < KH - 1) {
                    memcpy(slot + KH * PW, slot, (size_t)PW * 2);
                }
            }
            next = v0 + KH;
            tk_dwp_outrow(buf + (v0 % KH) * PW, w + c * KH * KP, ch + c, out + oy * OW * C + c, OW, KH, KW, SW,
                          PW, C, lo, hi);
        }
    }
}

/* One output row `oy` of a depthwise layer in a fused group (input rows from a ring of RIN rows, or a
 * whole tensor: RIN 0), written at `out`: each channel's KH rows are widened afresh. */
TK_INLINE void tk_dwp_spec_row(const int8_t *in, int8_t *out, const int32_t *w, const tk_ch_t *ch, int16_t *buf,
                               int32_t IH, int32_t IW, int32_t C, int32_t OW, int32_t KH, int32_t KW, int32_t SH,
                               int32_t SW, int32_t PT, int32_t PL, int32_t zp, int32_t lo, int32_t hi, int32_t RIN,
                               int32_t oy)
{
    const int32_t PW = TK_DWP_PW(OW, KW, SW), KP = (KW + 1) / 2;
    for (int32_t c = 0; c < C; c++) {
        for (int32_t ky = 0; ky < KH; ky++) {
            tk_dwp_row(buf + ky * PW, in, oy * SH - PT + ky, c, IH, IW, C, PW, PL, zp, RIN);
        }
        tk_dwp_outrow(buf, w + c * KH * KP, ch + c, out + c, OW, KH, KW, SW, PW, C, lo, hi);
    }
}

/* After rows [y, y + n) of a ring of R slots (plus M mirror slots) were written: a row in one of the
 * first M slots is copied to its mirror slot past the end, which keeps every window of M + 1 rows in
 * one piece for tk_dw_spec_row. */
static inline void tk_ring_mirror(int8_t *ring, int32_t y, int32_t n, int32_t H, int32_t R, int32_t M,
                                  int32_t ROWBYTES)
{
    for (int32_t r = y; r < y + n && r < H; r++) {
        const int32_t slot = r % R;
        if (slot < M) {
            memcpy(ring + (R + slot) * ROWBYTES, ring + slot * ROWBYTES, (size_t)ROWBYTES);
        }
    }
}

#endif
