/* FULLY_CONNECTED, int8 (per-tensor or per-channel multipliers, bias pre-folded). Requantizes with a
 * single rounding, as TFLite's reference kernel does (see tk_mbqm_single). */
#include "tk_kernels.h"

#include "tk_dot.h"
#include "tk_fixedpoint.h"

static inline int8_t tk_fc_out(const tk_requant_ch_t *rq, int32_t acc, int32_t ch)
{
    acc = tk_mbqm_single(acc, rq->mult[ch], rq->shift[ch]) + rq->output_offset;
    return (int8_t)tk_clamp(acc, rq->act_min, rq->act_max);
}

void tk_fully_connected(const tk_fc_t *p, const int8_t *in, int8_t *out)
{
    const int32_t n = p->in_features, o_n = p->out_features;
    for (int32_t b = 0; b < p->batches; b++, in += n, out += o_n) {
        const int8_t *w = p->weights;
        int32_t o = 0;
        for (; o + 2 <= o_n; o += 2, w += 2 * n) {
            int32_t a0 = p->bias[o], a1 = p->bias[o + 1];
            tk_dot2(in, w, w + n, n, &a0, &a1);
            out[o] = tk_fc_out(&p->rq, a0, o);
            out[o + 1] = tk_fc_out(&p->rq, a1, o + 1);
        }
        for (; o < o_n; o++, w += n) {
            out[o] = tk_fc_out(&p->rq, p->bias[o] + tk_dot(in, w, n), o);
        }
    }
}
