/* AVERAGE_POOL_2D, MAX_POOL_2D and MEAN over H,W: int8, TFLite reference arithmetic. */
#include "tk_kernels.h"

#include "tk_fixedpoint.h"

void tk_avg_pool(const tk_pool_t *p, const int8_t *in, int8_t *out)
{
    const int32_t c_n = p->c;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        const int32_t fy0 = iy0 < 0 ? -iy0 : 0;
        const int32_t fy1 = p->f_h < p->in_h - iy0 ? p->f_h : p->in_h - iy0;
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l;
            const int32_t fx0 = ix0 < 0 ? -ix0 : 0;
            const int32_t fx1 = p->f_w < p->in_w - ix0 ? p->f_w : p->in_w - ix0;
            /* TFLite divides by the number of in-bounds taps, not the filter size. */
            const int32_t count = (fy1 - fy0) * (fx1 - fx0);
            for (int32_t c = 0; c < c_n; c++) {
                int32_t sum = 0;
                for (int32_t fy = fy0; fy < fy1; fy++) {
                    const int8_t *row = in + ((iy0 + fy) * p->in_w + ix0) * c_n + c;
                    for (int32_t fx = fx0; fx < fx1; fx++) {
                        sum += row[fx * c_n];
                    }
                }
                int32_t avg = 0;
                if (count > 0) {
                    avg = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
                }
                *out++ = (int8_t)tk_clamp(avg, p->act_min, p->act_max);
            }
        }
    }
}

void tk_max_pool(const tk_pool_t *p, const int8_t *in, int8_t *out)
{
    const int32_t c_n = p->c;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        const int32_t fy0 = iy0 < 0 ? -iy0 : 0;
        const int32_t fy1 = p->f_h < p->in_h - iy0 ? p->f_h : p->in_h - iy0;
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l;
            const int32_t fx0 = ix0 < 0 ? -ix0 : 0;
            const int32_t fx1 = p->f_w < p->in_w - ix0 ? p->f_w : p->in_w - ix0;
            for (int32_t c = 0; c < c_n; c++) {
                int32_t m = -128;
                for (int32_t fy = fy0; fy < fy1; fy++) {
                    const int8_t *row = in + ((iy0 + fy) * p->in_w + ix0) * c_n + c;
                    for (int32_t fx = fx0; fx < fx1; fx++) {
                        m = row[fx * c_n] > m ? row[fx * c_n] : m;
                    }
                }
                *out++ = (int8_t)tk_clamp(m, p->act_min, p->act_max);
            }
        }
    }
}

void tk_mean_hw(const tk_mean_t *p, const int8_t *in, int8_t *out)
{
    for (int32_t c = 0; c < p->c; c++) {
        int32_t acc = 0;
        for (int32_t i = 0; i < p->hw; i++) {
            acc += in[i * p->c + c] + p->input_offset;
        }
        acc = tk_mbqm(acc, p->mult, p->shift) + p->output_offset;
        out[c] = (int8_t)tk_clamp(acc, -128, 127);
    }
}
