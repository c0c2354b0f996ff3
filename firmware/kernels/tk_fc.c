/* FULLY_CONNECTED, int8 (per-tensor or per-channel multipliers, bias pre-folded). Requantizes with a
 * single rounding, as TFLite's reference kernel does (see tk_mbqm_single). */
#include "tk_kernels.h"

#include "tk_gemv.h"

void tk_fully_connected(const tk_fc_t *p, const int8_t *in, int8_t *out)
{
    const tk_requant_ch_t rq = p->rq; /* a local: stores through int8_t pointers cannot alias it */
    for (int32_t b = 0; b < p->batches; b++, in += p->in_features, out += p->out_features) {
        tk_gemv(in, p->weights, p->in_features, p->out_features, p->bias, &rq, out, TK_RQ_SINGLE);
    }
}
