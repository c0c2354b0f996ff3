/* int8 kernels of the generated inference engine. Portable C99; the generated model.c fills one
 * constant parameter block per layer (in flash) and calls one kernel per layer on arena pointers.
 * Layouts follow TFLite: activations NHWC (batch 1), conv weights [O][KH][KW][I], depthwise weights
 * [KH][KW][C*M], fully connected weights [O][I]. */
#ifndef TK_KERNELS_H
#define TK_KERNELS_H

#include <stdint.h>

/* Per-channel requantization shared by conv, depthwise and fully connected layers. */
typedef struct {
    const int32_t *mult;   /* Q31 multipliers, one per output channel */
    const int32_t *shift;  /* exponents, positive = left */
    int32_t output_offset;
    int32_t act_min, act_max;
    /* Set by the code generator when every shift is <= -1 and every accumulator is provably below
     * 2^30 in magnitude: the requantization may then take the short exact path (tk_mbqm_fast). */
    int32_t fast;
} tk_requant_ch_t;

/* CONV_2D weight layouts, chosen by the code generator (the kernel follows `layout`):
 * PLAIN      [O][KH][KW][I] (any dilation; per-tap dot products);
 * POINTWISE  1x1 without padding: [O][I] 4-interleaved (tk_dot4x4), a matrix-vector product per pixel;
 * ROWS       dilation 1: per group of 4 output channels, for each kernel row the 4-interleaved
 *            [4][KW*I] block (an input row segment of KW*I bytes is contiguous in NHWC), then the
 *            O % 4 last channels plain. Border pixels go through a zero-point-padded patch of
 *            KH*KW*I <= TK_PATCH_MAX bytes on the stack. */
#define TK_LAYOUT_PLAIN 0
#define TK_LAYOUT_POINTWISE 1
#define TK_LAYOUT_ROWS 2
#define TK_PATCH_MAX 1024

/* CONV_2D and DEPTHWISE_CONV_2D. `bias` is folded at code generation time:
 * bias[oc] + input_offset * sum(weights of oc), so the inner loops multiply raw int8 values. Padding
 * taps then count as the input zero point (whose offset-corrected value is 0, as TFLite skips them). */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t dil_h, dil_w;
    int32_t pad_t, pad_l;
    int32_t depth_mult;   /* depthwise only */
    int32_t layout;       /* conv only: how `weights` are laid out, TK_LAYOUT_* */
    int32_t input_zp;     /* value of a padding tap: -input_offset */
    const int8_t *weights;
    const int32_t *bias;
    tk_requant_ch_t rq;
} tk_conv_t;

void tk_conv2d(const tk_conv_t *p, const int8_t *in, int8_t *out);
void tk_depthwise(const tk_conv_t *p, const int8_t *in, int8_t *out);
/* In place: multiplier 1, output shape = input shape; scratch holds out_h * out_w bytes. */
void tk_depthwise_inplace(const tk_conv_t *p, int8_t *buf, int8_t *scratch);

typedef struct {
    int32_t batches, in_features, out_features;
    const int8_t *weights;  /* [out_features][in_features], 4-interleaved (see tk_dot4x4) */
    const int32_t *bias;    /* folded as for conv */
    tk_requant_ch_t rq;
} tk_fc_t;

void tk_fully_connected(const tk_fc_t *p, const int8_t *in, int8_t *out);

/* ADD with TFLite's general rescaling, for inputs broadcast to the output: 4-D output dims with per-input
 * strides (0 on a broadcast dimension). Same-shape ADDs take tk_add_lut (tk_spec.h). */
typedef struct {
    int32_t dims[4];
    int32_t stride1[4], stride2[4];
    int32_t input1_offset, input2_offset, output_offset, left_shift;
    int32_t input1_mult, input1_shift, input2_mult, input2_shift, output_mult, output_shift;
    int32_t act_min, act_max;
    int32_t fast; /* all three shifts <= 0: tk_mbqm_fast0 applies (|inputs| < 2^28, |sum| < 2^29) */
} tk_add_t;

void tk_add(const tk_add_t *p, const int8_t *in1, const int8_t *in2, int8_t *out);

typedef struct {
    int32_t in_h, in_w, c, out_h, out_w;
    int32_t f_h, f_w, stride_h, stride_w, pad_t, pad_l;
    int32_t act_min, act_max;
} tk_pool_t;

void tk_avg_pool(const tk_pool_t *p, const int8_t *in, int8_t *out);
void tk_max_pool(const tk_pool_t *p, const int8_t *in, int8_t *out);

/* MEAN over H and W of an NHWC tensor, LiteRT's integer mean: 1/hw is folded into mult and shift. */
typedef struct {
    int32_t hw, c;
    int32_t input_offset, output_offset, mult, shift;
} tk_mean_t;

void tk_mean_hw(const tk_mean_t *p, const int8_t *in, int8_t *out);

/* QUANTIZE int8 -> int8 and CONCATENATION parts: out = clamp(MBQM(x + input_offset) + output_offset).
 * Copies `outer` rows of `inner` elements into rows `out_stride` apart (a concat part); a plain
 * requantize is outer = 1. */
typedef struct {
    int32_t outer, inner, out_stride;
    int32_t identity;
    int32_t input_offset, output_offset, mult, shift;
} tk_requant_t;

void tk_requant(const tk_requant_t *p, const int8_t *in, int8_t *out);

/* PAD of an up-to-4-D tensor with a constant (the output zero point). */
typedef struct {
    int32_t in_dims[4], out_dims[4], before[4];
    int32_t pad_value;
} tk_pad_t;

void tk_pad(const tk_pad_t *p, const int8_t *in, int8_t *out);

/* int8 SOFTMAX over the last dimension (output scale 1/256, zero point -128, as TFLite requires). */
typedef struct {
    int32_t rows, depth;
    int32_t input_mult, input_left_shift, diff_min;
} tk_softmax_t;

void tk_softmax(const tk_softmax_t *p, const int8_t *in, int8_t *out);

#endif
