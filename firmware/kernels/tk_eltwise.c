/* ADD (TFLite's general int8 rescaling), QUANTIZE int8->int8 and concatenation parts. */
#include <string.h>

#include "tk_kernels.h"

#include "tk_fixedpoint.h"

static inline int8_t tk_add1(const tk_add_t *p, int32_t a, int32_t b)
{
    const int32_t xa = (int32_t)((uint32_t)(a + p->input1_offset) << p->left_shift);
    const int32_t xb = (int32_t)((uint32_t)(b + p->input2_offset) << p->left_shift);
    int32_t r;
    if (p->fast) {
        const int32_t sum = tk_mbqm_fast0(xa, p->input1_mult, p->input1_shift) +
                            tk_mbqm_fast0(xb, p->input2_mult, p->input2_shift);
        r = tk_mbqm_fast0(sum, p->output_mult, p->output_shift);
    } else {
        const int32_t sum = tk_wrap_add(tk_mbqm(xa, p->input1_mult, p->input1_shift),
                                        tk_mbqm(xb, p->input2_mult, p->input2_shift));
        r = tk_mbqm(sum, p->output_mult, p->output_shift);
    }
    return (int8_t)tk_clamp(r + p->output_offset, p->act_min, p->act_max);
}

void tk_add(const tk_add_t *params, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    const tk_add_t q = *params; /* a local: stores through int8_t pointers cannot alias it */
    const tk_add_t *p = &q;
    for (int32_t i0 = 0; i0 < p->dims[0]; i0++) {
        for (int32_t i1 = 0; i1 < p->dims[1]; i1++) {
            for (int32_t i2 = 0; i2 < p->dims[2]; i2++) {
                const int8_t *a = in1 + i0 * p->stride1[0] + i1 * p->stride1[1] + i2 * p->stride1[2];
                const int8_t *b = in2 + i0 * p->stride2[0] + i1 * p->stride2[1] + i2 * p->stride2[2];
                for (int32_t i3 = 0; i3 < p->dims[3]; i3++) {
                    *out++ = tk_add1(p, a[i3 * p->stride1[3]], b[i3 * p->stride2[3]]);
                }
            }
        }
    }
}

void tk_requant(const tk_requant_t *p, const int8_t *in, int8_t *out)
{
    for (int32_t r = 0; r < p->outer; r++, in += p->inner, out += p->out_stride) {
        if (p->identity) {
            memmove(out, in, (size_t)p->inner);
            continue;
        }
        for (int32_t i = 0; i < p->inner; i++) {
            const int32_t v = tk_mbqm(in[i] + p->input_offset, p->mult, p->shift) + p->output_offset;
            out[i] = (int8_t)tk_clamp(v, -128, 127);
        }
    }
}

void tk_pad(const tk_pad_t *p, const int8_t *in, int8_t *out)
{
    const int32_t *od = p->out_dims;
    const int32_t *id = p->in_dims;
    memset(out, (int)(int8_t)p->pad_value, (size_t)(od[0] * od[1] * od[2] * od[3]));
    for (int32_t i0 = 0; i0 < id[0]; i0++) {
        for (int32_t i1 = 0; i1 < id[1]; i1++) {
            for (int32_t i2 = 0; i2 < id[2]; i2++) {
                const int32_t o = (((i0 + p->before[0]) * od[1] + i1 + p->before[1]) * od[2] + i2 + p->before[2]) *
                                      od[3] +
                                  p->before[3];
                memcpy(out + o, in, (size_t)id[3]);
                in += id[3];
            }
        }
    }
}
