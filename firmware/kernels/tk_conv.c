/* CONV_2D and DEPTHWISE_CONV_2D, int8 per-channel (TFLite reference arithmetic, bias pre-folded). */
#include <string.h>

#include "tk_kernels.h"

#include "tk_dot.h"
#include "tk_fixedpoint.h"
#include "tk_gemv.h"

static inline int8_t tk_out(const tk_requant_ch_t *rq, int32_t acc, int32_t ch)
{
    return tk_requant_one(rq, acc, ch, TK_RQ_AUTO);
}

/* Pointwise (1x1, no padding): each output pixel is a matrix-vector product over the channels. */
static void tk_conv_pointwise(const tk_conv_t *p, const int8_t *in, int8_t *out)
{
    const tk_requant_ch_t rq = p->rq; /* a local: stores through int8_t pointers cannot alias it */
    const int32_t ic = p->in_c, oc_n = p->out_c;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int8_t *x = in + (oy * p->stride_h) * p->in_w * ic;
        for (int32_t ox = 0; ox < p->out_w; ox++, x += p->stride_w * ic, out += oc_n) {
            tk_gemv(x, p->weights, ic, oc_n, p->bias, &rq, out, TK_RQ_AUTO);
        }
    }
}

/* Dilation-1 convolution over contiguous row segments: for each kernel row the KW*I input bytes of a
 * pixel's window are adjacent in NHWC, so each output channel group takes KH dot products of KW*I
 * (tk_dot4x4). Border windows are first copied into a patch padded with the input zero point. */
static inline __attribute__((always_inline)) void tk_conv_rows_body(const tk_conv_t *p, const int8_t *in,
                                                                     int8_t *out, int mode)
{
    const tk_requant_ch_t rq = p->rq; /* a local: stores through int8_t pointers cannot alias it */
    const int32_t ic = p->in_c, oc_n = p->out_c, kh = p->k_h, kw = p->k_w;
    const int32_t seg = kw * ic;
    const int32_t groups = oc_n / 4;
    int8_t patch[TK_PATCH_MAX];
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        for (int32_t ox = 0; ox < p->out_w; ox++, out += oc_n) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l;
            const int8_t *win; /* kernel row ky starts at win + ky * rstride */
            int32_t rstride;
            if (iy0 >= 0 && ix0 >= 0 && iy0 + kh <= p->in_h && ix0 + kw <= p->in_w) {
                win = in + (iy0 * p->in_w + ix0) * ic;
                rstride = p->in_w * ic;
            } else {
                memset(patch, (int)(int8_t)p->input_zp, (size_t)(kh * seg));
                for (int32_t ky = 0; ky < kh; ky++) {
                    const int32_t iy = iy0 + ky;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    const int32_t kx0 = ix0 < 0 ? -ix0 : 0;
                    const int32_t kx1 = ix0 + kw > p->in_w ? p->in_w - ix0 : kw;
                    if (kx1 > kx0) {
                        memcpy(patch + ky * seg + kx0 * ic, in + (iy * p->in_w + ix0 + kx0) * ic,
                               (size_t)((kx1 - kx0) * ic));
                    }
                }
                win = patch;
                rstride = seg;
            }
            const int8_t *w = p->weights;
            for (int32_t g = 0; g < groups; g++) {
                const int32_t oc = 4 * g;
                int32_t acc[4] = {p->bias[oc], p->bias[oc + 1], p->bias[oc + 2], p->bias[oc + 3]};
                for (int32_t ky = 0; ky < kh; ky++, w += 4 * seg) {
                    tk_dot4x4(win + ky * rstride, w, seg, acc);
                }
                out[oc] = tk_requant_one(&rq, acc[0], oc, mode);
                out[oc + 1] = tk_requant_one(&rq, acc[1], oc + 1, mode);
                out[oc + 2] = tk_requant_one(&rq, acc[2], oc + 2, mode);
                out[oc + 3] = tk_requant_one(&rq, acc[3], oc + 3, mode);
            }
            for (int32_t oc = 4 * groups; oc < oc_n; oc++) {
                int32_t acc = p->bias[oc];
                for (int32_t ky = 0; ky < kh; ky++, w += seg) {
                    acc += tk_dot(win + ky * rstride, w, seg);
                }
                out[oc] = tk_requant_one(&rq, acc, oc, mode);
            }
        }
    }
}

/* One inlined copy per requantization path, so the loops hold no per-output test of rq.fast. */
static void tk_conv_rows(const tk_conv_t *p, const int8_t *in, int8_t *out)
{
    if (p->rq.fast) {
        tk_conv_rows_body(p, in, out, TK_RQ_FAST);
    } else {
        tk_conv_rows_body(p, in, out, TK_RQ_DOUBLE);
    }
}

void tk_conv2d(const tk_conv_t *p, const int8_t *in, int8_t *out)
{
    const tk_requant_ch_t rq = p->rq; /* a local: stores through int8_t pointers cannot alias it */
    if (p->layout == TK_LAYOUT_POINTWISE) {
        tk_conv_pointwise(p, in, out);
        return;
    }
    if (p->layout == TK_LAYOUT_ROWS) {
        tk_conv_rows(p, in, out);
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
                out[oc] = tk_out(&rq, acc, oc);
            }
            out += oc_n;
        }
    }
}

/* Depthwise, one output channel at a time: its weights, bias and requantization stay in registers (or
 * one stack slot each) across the whole plane, instead of being reloaded for every pixel. Output channel
 * oc = c * M + m reads input channel c. Weights are [KH][KW][C*M]. */
static inline int8_t tk_dw_out(int32_t acc, int32_t mult, int32_t shift, int32_t off, int32_t lo, int32_t hi,
                                int fast)
{
    return (int8_t)tk_clamp((fast ? tk_mbqm_fast(acc, mult, shift) : tk_mbqm(acc, mult, shift)) + off, lo, hi);
}

/* One output pixel with bounds checks (borders, and any kernel size / dilation). */
static int32_t tk_dw_pixel(const tk_conv_t *p, const int8_t *x, const int8_t *w, int32_t iy0, int32_t ix0)
{
    const int32_t ic = p->in_c, oc_n = p->out_c;
    int32_t acc = 0;
    for (int32_t ky = 0; ky < p->k_h; ky++) {
        const int32_t iy = iy0 + ky * p->dil_h;
        const int row_in = iy >= 0 && iy < p->in_h;
        for (int32_t kx = 0; kx < p->k_w; kx++) {
            const int32_t ix = ix0 + kx * p->dil_w;
            const int32_t wv = w[(ky * p->k_w + kx) * oc_n];
            if (row_in && ix >= 0 && ix < p->in_w) {
                acc += x[(iy * p->in_w + ix) * ic] * wv;
            } else {
                acc += p->input_zp * wv;
            }
        }
    }
    return acc;
}

/* 3x3 (dilation 1) border pixel: out-of-bounds taps count as the input zero point (their offset-corrected
 * value is 0, as TFLite skips them; the folded bias expects the raw value). */
static inline int32_t tk_dw3_border(const int8_t *x, const int32_t *wk, int32_t iy0, int32_t ix0, int32_t h,
                                    int32_t wd, int32_t ic, int32_t zp)
{
    int32_t acc = 0;
    for (int32_t ky = 0; ky < 3; ky++, wk += 3) {
        const int32_t iy = iy0 + ky;
        if (iy < 0 || iy >= h) {
            acc += zp * (wk[0] + wk[1] + wk[2]);
            continue;
        }
        const int8_t *r = x + (iy * wd) * ic;
        for (int32_t kx = 0; kx < 3; kx++) {
            const int32_t ix = ix0 + kx;
            acc += (ix < 0 || ix >= wd ? zp : r[ix * ic]) * wk[kx];
        }
    }
    return acc;
}

#define TK_DW_MAX_TAPS 49 /* up to 7x7, MCUNet's largest depthwise kernel */

/* Depthwise with depth multiplier 1, pixel by pixel, four channels at a time: a pixel's channels are
 * adjacent in NHWC, as are one tap's weights, so each tap is one 4-byte load of each (tk_mac4). Taps
 * outside the input read a row of zero points (the raw value of a skipped tap under the folded bias). */
static inline __attribute__((always_inline)) void tk_depthwise_vec_body(const tk_conv_t *p, const int8_t *in,
                                                                         int8_t *out, int mode)
{
    const tk_requant_ch_t rq = p->rq; /* a local: stores through int8_t pointers cannot alias it */
    const int32_t c_n = p->in_c, kh = p->k_h, kw = p->k_w, taps = kh * kw;
    int8_t zrow[TK_PATCH_MAX];
    const int8_t *xp[TK_DW_MAX_TAPS];
    int32_t toff[TK_DW_MAX_TAPS]; /* each tap's offset from the window's first pixel */
    memset(zrow, (int)(int8_t)p->input_zp, (size_t)c_n);
    for (int32_t ky = 0, t = 0; ky < kh; ky++) {
        for (int32_t kx = 0; kx < kw; kx++, t++) {
            toff[t] = (ky * p->dil_h * p->in_w + kx * p->dil_w) * c_n;
        }
    }
    const int32_t span_h = (kh - 1) * p->dil_h, span_w = (kw - 1) * p->dil_w;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        const int rows_in = iy0 >= 0 && iy0 + span_h < p->in_h;
        for (int32_t ox = 0; ox < p->out_w; ox++, out += c_n) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l;
            if (rows_in && ix0 >= 0 && ix0 + span_w < p->in_w) { /* inside: no tap needs a bounds check */
                const int8_t *base = in + (iy0 * p->in_w + ix0) * c_n;
                for (int32_t t = 0; t < taps; t++) {
                    xp[t] = base + toff[t];
                }
            } else {
                for (int32_t ky = 0, t = 0; ky < kh; ky++) {
                    const int32_t iy = iy0 + ky * p->dil_h;
                    for (int32_t kx = 0; kx < kw; kx++, t++) {
                        const int32_t ix = ix0 + kx * p->dil_w;
                        const int ok = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
                        xp[t] = ok ? in + (iy * p->in_w + ix) * c_n : zrow;
                    }
                }
            }
            int32_t c = 0;
            for (; c + 4 <= c_n; c += 4) {
                int32_t acc[4] = {p->bias[c], p->bias[c + 1], p->bias[c + 2], p->bias[c + 3]};
                const int8_t *w = p->weights + c;
                for (int32_t t = 0; t < taps; t++, w += c_n) {
                    tk_mac4(xp[t] + c, w, acc);
                }
                /* unrolled, not a loop over j: keeps acc[] in registers through the tap loop */
                out[c] = tk_requant_one(&rq, acc[0], c, mode);
                out[c + 1] = tk_requant_one(&rq, acc[1], c + 1, mode);
                out[c + 2] = tk_requant_one(&rq, acc[2], c + 2, mode);
                out[c + 3] = tk_requant_one(&rq, acc[3], c + 3, mode);
            }
            for (; c < c_n; c++) {
                int32_t acc = p->bias[c];
                for (int32_t t = 0; t < taps; t++) {
                    acc += xp[t][c] * p->weights[t * c_n + c];
                }
                out[c] = tk_requant_one(&rq, acc, c, mode);
            }
        }
    }
}

/* As tk_conv_rows: one copy per requantization path. (The same split made pointwise layers slower:
 * measured +9 % on mlperf_kws, so tk_conv_pointwise keeps its per-output test.) */
static void tk_depthwise_vec(const tk_conv_t *p, const int8_t *in, int8_t *out)
{
    if (p->rq.fast) {
        tk_depthwise_vec_body(p, in, out, TK_RQ_FAST);
    } else {
        tk_depthwise_vec_body(p, in, out, TK_RQ_DOUBLE);
    }
}

/* tk_dw_channel for any kernel size and dilation: pixels whose window lies inside the input take an
 * unchecked loop over the taps (weights cached as int32 when they fit), borders the checked one. */
static void tk_dw_channel_any(const tk_conv_t *p, const int8_t *x, int32_t oc, int8_t *y, int32_t ystride)
{
    const tk_requant_ch_t rq = p->rq; /* a local: stores through int8_t pointers cannot alias it */
    const int32_t ic = p->in_c, row = p->in_w * ic, kh = p->k_h, kw = p->k_w, taps = kh * kw;
    const int32_t sw = p->stride_w, pl = p->pad_l, dh = p->dil_h * row, dw = p->dil_w * ic;
    const int32_t bias = p->bias[oc], mult = rq.mult[oc], shift = rq.shift[oc];
    const int32_t off = rq.output_offset, lo = rq.act_min, hi = rq.act_max;
    const int8_t *w = p->weights + oc;
    int32_t wk[TK_DW_MAX_TAPS];
    const int cached = taps <= TK_DW_MAX_TAPS;
    for (int32_t t = 0; cached && t < taps; t++) {
        wk[t] = w[t * p->out_c];
    }
    const int32_t span_w = (kw - 1) * p->dil_w + 1, span_h = (kh - 1) * p->dil_h + 1;
    const int32_t ox_lo = (pl + sw - 1) / sw;
    const int32_t room = p->in_w - span_w + pl; /* C division truncates: a negative room means no interior */
    int32_t ox_hi = room < 0 ? ox_lo : room / sw + 1;
    ox_hi = ox_hi > p->out_w ? p->out_w : (ox_hi < ox_lo ? ox_lo : ox_hi);
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        const int rows_in = cached && iy0 >= 0 && iy0 + span_h <= p->in_h;
        for (int32_t ox = 0; ox < p->out_w; ox++, y += ystride) {
            const int32_t ix0 = ox * sw - pl;
            int32_t acc;
            if (rows_in && ox >= ox_lo && ox < ox_hi) {
                const int8_t *r = x + iy0 * row + ix0 * ic;
                acc = bias;
                for (int32_t ky = 0, t = 0; ky < kh; ky++, r += dh) {
                    const int8_t *q = r;
                    for (int32_t kx = 0; kx < kw; kx++, t++, q += dw) {
                        acc += *q * wk[t];
                    }
                }
            } else {
                acc = tk_dw_pixel(p, x, w, iy0, ix0) + bias;
            }
            *y = tk_dw_out(acc, mult, shift, off, lo, hi, rq.fast);
        }
    }
}

/* One output channel `oc` of a depthwise layer, written to y[0], y[ystride], ... (pixel order). Its
 * weights, bias and requantization stay in registers across the plane. */
static void tk_dw_channel(const tk_conv_t *p, const int8_t *in, int32_t oc, int8_t *y, int32_t ystride)
{
    const tk_requant_ch_t rq = p->rq; /* a local: stores through int8_t pointers cannot alias it */
    const int32_t ic = p->in_c, oc_n = p->out_c;
    const int32_t row = p->in_w * ic;
    const int32_t sw = p->stride_w, pl = p->pad_l;
    const int8_t *x = in + oc / p->depth_mult;
    const int32_t bias = p->bias[oc];
    const int32_t mult = rq.mult[oc], shift = rq.shift[oc];
    const int32_t off = rq.output_offset, lo = rq.act_min, hi = rq.act_max;
    if (!(p->k_h == 3 && p->k_w == 3 && p->dil_h == 1 && p->dil_w == 1)) {
        tk_dw_channel_any(p, x, oc, y, ystride);
        return;
    }
    /* Output columns whose three input columns are all in bounds: [ox_lo, ox_hi). */
    const int32_t ox_lo = (pl + sw - 1) / sw;
    int32_t ox_hi = (p->in_w - 3 + pl) / sw + 1;
    ox_hi = ox_hi > p->out_w ? p->out_w : (ox_hi < ox_lo ? ox_lo : ox_hi);
    int32_t wk[9];
    for (int32_t t = 0; t < 9; t++) {
        wk[t] = p->weights[t * oc_n + oc];
    }
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        const int rows_in = iy0 >= 0 && iy0 + 2 < p->in_h;
        int32_t ox = 0;
        for (; ox < (rows_in ? ox_lo : p->out_w); ox++, y += ystride) {
            const int32_t acc = tk_dw3_border(x, wk, iy0, ox * sw - pl, p->in_h, p->in_w, ic, p->input_zp);
            *y = tk_dw_out(acc + bias, mult, shift, off, lo, hi, rq.fast);
        }
        if (rows_in) {
            const int8_t *r = x + iy0 * row + (ox * sw - pl) * ic;
            const int32_t step = sw * ic;
            const int32_t w0 = wk[0], w1 = wk[1], w2 = wk[2], w3 = wk[3], w4 = wk[4];
            const int32_t w5 = wk[5], w6 = wk[6], w7 = wk[7], w8 = wk[8];
            for (; ox < ox_hi; ox++, y += ystride, r += step) {
                const int8_t *r1 = r + row, *r2 = r + 2 * row;
                int32_t acc = bias + r[0] * w0 + r[ic] * w1 + r[2 * ic] * w2;
                acc += r1[0] * w3 + r1[ic] * w4 + r1[2 * ic] * w5;
                acc += r2[0] * w6 + r2[ic] * w7 + r2[2 * ic] * w8;
                *y = tk_dw_out(acc, mult, shift, off, lo, hi, rq.fast);
            }
            for (; ox < p->out_w; ox++, y += ystride) {
                const int32_t acc = tk_dw3_border(x, wk, iy0, ox * sw - pl, p->in_h, p->in_w, ic, p->input_zp);
                *y = tk_dw_out(acc + bias, mult, shift, off, lo, hi, rq.fast);
            }
        }
    }
}

void tk_depthwise(const tk_conv_t *p, const int8_t *in, int8_t *out)
{
    if (p->depth_mult == 1 && p->k_h * p->k_w <= TK_DW_MAX_TAPS && p->in_c <= TK_PATCH_MAX) {
        tk_depthwise_vec(p, in, out);
        return;
    }
    for (int32_t oc = 0; oc < p->out_c; oc++) {
        tk_dw_channel(p, in, oc, out + oc, p->out_c);
    }
}

/* In place (multiplier 1, output shape = input shape): channel c's output plane depends only on
 * channel c's input, so it is computed into `scratch` (out_h * out_w bytes, planned in the arena) and
 * then copied over channel c. The arena then never holds both tensors: MCUNet's in-place depthwise. */
void tk_depthwise_inplace(const tk_conv_t *p, int8_t *buf, int8_t *scratch)
{
    const int32_t c_n = p->out_c, n = p->out_h * p->out_w;
    for (int32_t c = 0; c < c_n; c++) {
        tk_dw_channel(p, buf, c, scratch, 1);
        for (int32_t i = 0; i < n; i++) {
            buf[i * c_n + c] = scratch[i];
        }
    }
}
