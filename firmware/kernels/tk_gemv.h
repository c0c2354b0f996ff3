/* Matrix-vector product with per-channel requantization: the core of pointwise convolutions (one call
 * per pixel) and fully connected layers (one per batch row). Weights in the 4-interleaved layout of
 * tk_dot4x4 for whole groups of 4 output channels, then plain rows for the oc_n % 4 last ones. */
#ifndef TK_GEMV_H
#define TK_GEMV_H

#include "tk_dot.h"
#include "tk_fixedpoint.h"
#include "tk_kernels.h"

/* How to requantize: TK_RQ_AUTO tests rq->fast for each output; a kernel that tests it once and passes
 * TK_RQ_FAST or TK_RQ_DOUBLE as a constant gets loops without that test. TK_RQ_SINGLE is FULLY_CONNECTED's
 * single rounding. */
enum { TK_RQ_AUTO = 0, TK_RQ_SINGLE = 1, TK_RQ_FAST = 2, TK_RQ_DOUBLE = 3 };

static inline int8_t tk_requant_one(const tk_requant_ch_t *rq, int32_t acc, int32_t ch, int mode)
{
    if (mode == TK_RQ_SINGLE) {
        acc = tk_mbqm_single(acc, rq->mult[ch], rq->shift[ch]);
    } else if (mode == TK_RQ_FAST || (mode == TK_RQ_AUTO && rq->fast)) {
        acc = tk_mbqm_fast(acc, rq->mult[ch], rq->shift[ch]);
    } else {
        acc = tk_mbqm(acc, rq->mult[ch], rq->shift[ch]);
    }
    return (int8_t)tk_clamp(acc + rq->output_offset, rq->act_min, rq->act_max);
}

static inline void tk_gemv(const int8_t *x, const int8_t *w, int32_t n, int32_t oc_n, const int32_t *bias,
                           const tk_requant_ch_t *rq, int8_t *out, int mode)
{
    int32_t oc = 0;
    for (; oc + 4 <= oc_n; oc += 4, w += 4 * n) {
        int32_t acc[4] = {bias[oc], bias[oc + 1], bias[oc + 2], bias[oc + 3]};
        tk_dot4x4(x, w, n, acc);
        out[oc] = tk_requant_one(rq, acc[0], oc, mode);
        out[oc + 1] = tk_requant_one(rq, acc[1], oc + 1, mode);
        out[oc + 2] = tk_requant_one(rq, acc[2], oc + 2, mode);
        out[oc + 3] = tk_requant_one(rq, acc[3], oc + 3, mode);
    }
    for (; oc < oc_n; oc++, w += n) {
        out[oc] = tk_requant_one(rq, bias[oc] + tk_dot(x, w, n), oc, mode);
    }
}

#endif
