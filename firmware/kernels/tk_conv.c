/* CONV_2D and DEPTHWISE_CONV_2D, int8 per-channel (TFLite reference arithmetic, bias pre-folded). */
#include "tk_kernels.h"

#include "tk_dot.h"
#include "tk_fixedpoint.h"

static inline int8_t tk_out(const tk_requant_ch_t *rq, int32_t acc, int32_t ch)
{
    acc = tk_mbqm(acc, rq->mult[ch], rq->shift[ch]) + rq->output_offset;
    return (int8_t)tk_clamp(acc, rq->act_min, rq->act_max);
}

/* 1x1, no padding, no dilation: each output pixel is a matrix-vector product over the channels. */
static void tk_conv_pointwise(const tk_conv_t *p, const int8_t *in, int8_t *out)
{
    const int32_t ic = p->in_c, oc_n = p->out_c;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int8_t *x = in + ((oy * p->stride_h) * p->in_w + ox * p->stride_w) * ic;
            const int8_t *w = p->weights;
            int32_t oc = 0;
            for (; oc + 2 <= oc_n; oc += 2, w += 2 * ic) {
                int32_t a0 = p->bias[oc], a1 = p->bias[oc + 1];
                tk_dot2(x, w, w + ic, ic, &a0, &a1);
                out[oc] = tk_out(&p->rq, a0, oc);
                out[oc + 1] = tk_out(&p->rq, a1, oc + 1);
            }
            for (; oc < oc_n; oc++, w += ic) {
                out[oc] = tk_out(&p->rq, p->bias[oc] + tk_dot(x, w, ic), oc);
            }
            out += oc_n;
        }
    }
}

void tk_conv2d(const tk_conv_t *p, const int8_t *in, int8_t *out)
{
    if (p->k_h == 1 && p->k_w == 1 && p->pad_t == 0 && p->pad_l == 0) {
        tk_conv_pointwise(p, in, out);
        return;
    }
    const int32_t ic = p->in_c, oc_n = p->out_c;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l;
            const int8_t *w = p->weights;
            for (int32_t oc = 0; oc < oc_n; oc++) {
                int32_t acc = p->bias[oc];
                for (int32_t ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = iy0 + ky * p->dil_h;
                    for (int32_t kx = 0; kx < p->k_w; kx++, w += ic) {
                        const int32_t ix = ix0 + kx * p->dil_w;
                        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                            acc += p->input_zp * tk_sum(w, ic);
                        } else {
                            acc += tk_dot(in + (iy * p->in_w + ix) * ic, w, ic);
                        }
                    }
                }
                out[oc] = tk_out(&p->rq, acc, oc);
            }
            out += oc_n;
        }
    }
}

/* Depthwise: output channel c*M + m reads input channel c. Weights are [KH][KW][C*M], so one tap's
 * weights for consecutive output channels are contiguous, as are the input channels of one pixel. */
void tk_depthwise(const tk_conv_t *p, const int8_t *in, int8_t *out)
{
    const int32_t ic = p->in_c, oc_n = p->out_c, m = p->depth_mult;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l;
            const int inside = iy0 >= 0 && ix0 >= 0 && iy0 + (p->k_h - 1) * p->dil_h < p->in_h &&
                               ix0 + (p->k_w - 1) * p->dil_w < p->in_w;
            if (inside && m == 1 && p->k_h == 3 && p->k_w == 3 && p->dil_h == 1 && p->dil_w == 1) {
                /* The common 3x3 case, unrolled: nine taps, no bounds checks. */
                const int32_t row = p->in_w * ic;
                const int8_t *x = in + (iy0 * p->in_w + ix0) * ic;
                const int8_t *w = p->weights;
                for (int32_t c = 0; c < oc_n; c++) {
                    const int8_t *xc = x + c;
                    const int8_t *wc = w + c;
                    int32_t acc = p->bias[c];
                    acc += xc[0] * wc[0] + xc[ic] * wc[oc_n] + xc[2 * ic] * wc[2 * oc_n];
                    acc += xc[row] * wc[3 * oc_n] + xc[row + ic] * wc[4 * oc_n] + xc[row + 2 * ic] * wc[5 * oc_n];
                    acc += xc[2 * row] * wc[6 * oc_n] + xc[2 * row + ic] * wc[7 * oc_n] +
                           xc[2 * row + 2 * ic] * wc[8 * oc_n];
                    out[c] = tk_out(&p->rq, acc, c);
                }
                out += oc_n;
                continue;
            }
            for (int32_t oc = 0; oc < oc_n; oc++) {
                const int32_t c = oc / m;
                int32_t acc = p->bias[oc];
                for (int32_t ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = iy0 + ky * p->dil_h;
                    for (int32_t kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ix0 + kx * p->dil_w;
                        const int32_t wv = p->weights[(ky * p->k_w + kx) * oc_n + oc];
                        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                            acc += p->input_zp * wv;
                        } else {
                            acc += in[(iy * p->in_w + ix) * ic + c] * wv;
                        }
                    }
                }
                out[oc] = tk_out(&p->rq, acc, oc);
            }
            out += oc_n;
        }
    }
}
