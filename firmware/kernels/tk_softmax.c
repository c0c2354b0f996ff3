/* int8 SOFTMAX with TFLite's reference fixed-point arithmetic: exp of the scaled differences to the
 * row maximum (5 integer bits), a 12-integer-bit sum, and a Newton-Raphson reciprocal, as gemmlowp
 * computes them. Raw Q-format values only: no float anywhere. */
#include "tk_kernels.h"

#include "tk_fixedpoint.h"

/* exp(a) for a in [-1/4, 0), a and the result in Q0.31. A Taylor series around -1/8. */
static int32_t tk_exp_quarter(int32_t a)
{
    const int32_t exp_minus_one_eighth = 1895147668;
    const int32_t one_third = 715827883;
    const int32_t x = tk_wrap_add(a, 1 << 28);
    const int32_t x2 = tk_srdhm(x, x);
    const int32_t x3 = tk_srdhm(x2, x);
    const int32_t x4 = tk_srdhm(x2, x2);
    const int32_t x4_over_4 = tk_rdbpot(x4, 2);
    const int32_t poly = tk_rdbpot(tk_wrap_add(tk_srdhm(tk_wrap_add(x4_over_4, x3), one_third), x2), 1);
    return tk_wrap_add(exp_minus_one_eighth, tk_srdhm(exp_minus_one_eighth, tk_wrap_add(x, poly)));
}

/* exp(a) for a <= 0 given in Q5.26; the result in Q0.31. */
static int32_t tk_exp_negative(int32_t a)
{
    static const int32_t barrel[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int32_t quarter = 1 << 24;
    const int32_t a_mod_minus_quarter = tk_wrap_sub(a & (quarter - 1), quarter);
    int32_t result = tk_exp_quarter(tk_sat_shl(a_mod_minus_quarter, 5));
    const int32_t remainder = tk_wrap_sub(a_mod_minus_quarter, a);
    for (int k = 0; k < 7; k++) {
        /* exp(-2^(k-2)) for every bit of the remainder above the quarter */
        if (remainder & (int32_t)(((uint32_t)1) << (24 + k))) {
            result = tk_srdhm(result, barrel[k]);
        }
    }
    return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + x) for x in [0, 1), Q0.31 in and out (three Newton-Raphson steps in Q2.29). */
static int32_t tk_one_over_one_plus_x(int32_t a)
{
    const int64_t sum = (int64_t)a + INT32_MAX;
    const int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = tk_wrap_add(1515870810, tk_srdhm(half_den, -1010580540));
    for (int i = 0; i < 3; i++) {
        const int32_t one_minus = tk_wrap_sub(1 << 29, tk_srdhm(half_den, x));
        x = tk_wrap_add(x, tk_sat_shl(tk_srdhm(x, one_minus), 2));
    }
    return tk_sat_shl(x, 1);
}

static int tk_clz32(uint32_t x)
{
    int n = 0;
    if (x == 0) {
        return 32;
    }
    while (!(x & 0x80000000u)) {
        x <<= 1;
        n++;
    }
    return n;
}

void tk_softmax(const tk_softmax_t *p, const int8_t *in, int8_t *out)
{
    const int32_t depth = p->depth;
    for (int32_t r = 0; r < p->rows; r++, in += depth, out += depth) {
        int32_t max_in_row = -128;
        for (int32_t c = 0; c < depth; c++) {
            max_in_row = in[c] > max_in_row ? in[c] : max_in_row;
        }
        int32_t sum_of_exps = 0; /* Q12.19 */
        for (int32_t c = 0; c < depth; c++) {
            const int32_t diff = in[c] - max_in_row;
            if (diff >= p->diff_min) {
                const int32_t scaled =
                    tk_srdhm((int32_t)((uint32_t)diff << p->input_left_shift), p->input_mult);
                sum_of_exps = tk_wrap_add(sum_of_exps, tk_rdbpot(tk_exp_negative(scaled), 12));
            }
        }
        /* reciprocal of the sum: normalise it into [1, 2), invert, remember the exponent */
        const int headroom_plus_one = tk_clz32((uint32_t)sum_of_exps);
        const int num_bits_over_unit = 12 - headroom_plus_one;
        const int32_t shifted_sum_minus_one =
            (int32_t)(((uint32_t)sum_of_exps << headroom_plus_one) - (((uint32_t)1) << 31));
        const int32_t shifted_scale = tk_one_over_one_plus_x(shifted_sum_minus_one);
        for (int32_t c = 0; c < depth; c++) {
            const int32_t diff = in[c] - max_in_row;
            if (diff >= p->diff_min) {
                const int32_t scaled =
                    tk_srdhm((int32_t)((uint32_t)diff << p->input_left_shift), p->input_mult);
                const int32_t e = tk_exp_negative(scaled);
                const int32_t unsat = tk_rdbpot(tk_srdhm(shifted_scale, e), num_bits_over_unit + 31 - 8);
                out[c] = (int8_t)tk_clamp(unsat - 128, -128, 127);
            } else {
                out[c] = -128;
            }
        }
    }
}
