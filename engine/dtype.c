/*
 * dtype.c - dtype tables, scalar float conversions and the reference (scalar) dequantizers.
 *
 * The dequantizers follow FORMATS.md 3.2 (ggml-quants.c semantics) exactly. They are the
 * numerical reference that the fused SIMD kernels in engine/cpu/ are tested against.
 */
#include "dtype.h"

#include <string.h>

#include "core.h"

static const struct {
    const char *name;
    int block_elems;
    int block_bytes;
} dtype_info[QV_DTYPE_COUNT] = {
    [QV_DTYPE_F32] = {"F32", 1, 4},           [QV_DTYPE_F16] = {"F16", 1, 2},
    [QV_DTYPE_BF16] = {"BF16", 1, 2},         [QV_DTYPE_Q8_0] = {"Q8_0", 32, 34},
    [QV_DTYPE_Q4_0] = {"Q4_0", 32, 18},       [QV_DTYPE_Q4_1] = {"Q4_1", 32, 20},
    [QV_DTYPE_Q5_0] = {"Q5_0", 32, 22},       [QV_DTYPE_Q5_1] = {"Q5_1", 32, 24},
    [QV_DTYPE_Q4_K] = {"Q4_K", 256, 144},     [QV_DTYPE_Q6_K] = {"Q6_K", 256, 210},
    [QV_DTYPE_Q2_K] = {"Q2_K", 256, 84},      [QV_DTYPE_Q3_K] = {"Q3_K", 256, 110},
    [QV_DTYPE_Q5_K] = {"Q5_K", 256, 176},     [QV_DTYPE_IQ4_NL] = {"IQ4_NL", 32, 18},
    [QV_DTYPE_IQ4_XS] = {"IQ4_XS", 256, 136},
};

/* The 16 values of a 4-bit IQ4_NL / IQ4_XS index (ggml's kvalues_iq4nl). */
const int8_t qv_iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                  1,    13,   25,  38,  53,  69,  89,  113};

const char *qv_dtype_name(enum qv_dtype t) {
    return (unsigned)t < QV_DTYPE_COUNT ? dtype_info[t].name : "?";
}
int qv_dtype_block_elems(enum qv_dtype t) { return dtype_info[t].block_elems; }
int qv_dtype_block_bytes(enum qv_dtype t) { return dtype_info[t].block_bytes; }

size_t qv_dtype_row_bytes(enum qv_dtype t, int64_t n_cols) {
    return (size_t)(n_cols / dtype_info[t].block_elems) * (size_t)dtype_info[t].block_bytes;
}

/* ---- scalar conversions ---- */

float qv_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            mant &= 0x3ff;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t qv_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t mant = x & 0x7fffff;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        mant |= 0x800000;
        int shift = 14 - e;
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
}

float qv_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t qv_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ---- reference dequantizers (FORMATS.md 3.2) ---- */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

void qv_dequantize_row(enum qv_dtype t, const void *row, float *y, int64_t n) {
    const uint8_t *p = row;
    switch (t) {
    case QV_DTYPE_F32: memcpy(y, row, (size_t)n * 4); return;
    case QV_DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            y[i] = qv_f16_to_f32(rd16(p + 2 * i));
        return;
    case QV_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            y[i] = qv_bf16_to_f32(rd16(p + 2 * i));
        return;
    case QV_DTYPE_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, p += 34, y += 32) {
            float d = qv_f16_to_f32(rd16(p));
            for (int j = 0; j < 32; j++)
                y[j] = (float)(int8_t)p[2 + j] * d;
        }
        return;
    case QV_DTYPE_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += 18, y += 32) {
            float d = qv_f16_to_f32(rd16(p));
            const uint8_t *qs = p + 2;
            for (int j = 0; j < 16; j++) {
                y[j] = (float)((qs[j] & 0xF) - 8) * d;
                y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
            }
        }
        return;
    case QV_DTYPE_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += 20, y += 32) {
            float d = qv_f16_to_f32(rd16(p));
            float m = qv_f16_to_f32(rd16(p + 2));
            const uint8_t *qs = p + 4;
            for (int j = 0; j < 16; j++) {
                y[j] = (float)(qs[j] & 0xF) * d + m;
                y[j + 16] = (float)(qs[j] >> 4) * d + m;
            }
        }
        return;
    case QV_DTYPE_Q5_0:
    case QV_DTYPE_Q5_1: {
        int has_m = t == QV_DTYPE_Q5_1;
        int bb = has_m ? 24 : 22;
        for (int64_t b = 0; b < n / 32; b++, p += bb, y += 32) {
            float d = qv_f16_to_f32(rd16(p));
            float m = has_m ? qv_f16_to_f32(rd16(p + 2)) : 0.0f;
            const uint8_t *qhp = p + (has_m ? 4 : 2);
            uint32_t qh = (uint32_t)qhp[0] | ((uint32_t)qhp[1] << 8) | ((uint32_t)qhp[2] << 16) |
                          ((uint32_t)qhp[3] << 24);
            const uint8_t *qs = qhp + 4;
            for (int j = 0; j < 16; j++) {
                int hb0 = (int)(((qh >> j) << 4) & 0x10);
                int hb1 = (int)((qh >> (j + 12)) & 0x10);
                int v0 = (qs[j] & 0xF) | hb0;
                int v1 = (qs[j] >> 4) | hb1;
                if (has_m) {
                    y[j] = (float)v0 * d + m;
                    y[j + 16] = (float)v1 * d + m;
                } else {
                    y[j] = (float)(v0 - 16) * d;
                    y[j + 16] = (float)(v1 - 16) * d;
                }
            }
        }
        return;
    }
    case QV_DTYPE_Q4_K:
        for (int64_t b = 0; b < n / 256; b++, p += 144) {
            float d = qv_f16_to_f32(rd16(p));
            float dmin = qv_f16_to_f32(rd16(p + 2));
            const uint8_t *scales = p + 4;
            const uint8_t *q = p + 16;
            for (int c = 0; c < 4; c++, q += 32) {
                uint8_t sc, mn;
                get_scale_min_k4(2 * c, scales, &sc, &mn);
                float d1 = d * sc, m1 = dmin * mn;
                get_scale_min_k4(2 * c + 1, scales, &sc, &mn);
                float d2 = d * sc, m2 = dmin * mn;
                for (int l = 0; l < 32; l++)
                    *y++ = d1 * (float)(q[l] & 0xF) - m1;
                for (int l = 0; l < 32; l++)
                    *y++ = d2 * (float)(q[l] >> 4) - m2;
            }
        }
        return;
    case QV_DTYPE_Q6_K:
        for (int64_t b = 0; b < n / 256; b++, p += 210) {
            const uint8_t *ql = p;
            const uint8_t *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            float d = qv_f16_to_f32(rd16(p + 208));
            for (int h = 0; h < 2; h++) {
                const uint8_t *QL = ql + 64 * h, *QH = qh + 32 * h;
                const int8_t *SC = sc + 8 * h;
                float *Y = y + 128 * h;
                for (int l = 0; l < 32; l++) {
                    int s = l / 16;
                    int q1 = ((QL[l] & 0xF) | (((QH[l] >> 0) & 3) << 4)) - 32;
                    int q2 = ((QL[l + 32] & 0xF) | (((QH[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((QL[l] >> 4) | (((QH[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((QL[l + 32] >> 4) | (((QH[l] >> 6) & 3) << 4)) - 32;
                    Y[l] = d * (float)SC[s] * (float)q1;
                    Y[l + 32] = d * (float)SC[s + 2] * (float)q2;
                    Y[l + 64] = d * (float)SC[s + 4] * (float)q3;
                    Y[l + 96] = d * (float)SC[s + 6] * (float)q4;
                }
            }
            y += 256;
        }
        return;
    case QV_DTYPE_Q2_K:
        /* scales[16] (4-bit scale | 4-bit min << 4 per 16 elements), qs[64], f16 d, dmin.
         * Element i = 128h + 32j + l holds bits 2j of qs[32h + l]; sub-block i / 16. */
        for (int64_t b = 0; b < n / 256; b++, p += 84, y += 256) {
            float d = qv_f16_to_f32(rd16(p + 80)), dmin = qv_f16_to_f32(rd16(p + 82));
            for (int s = 0; s < 16; s++) { /* elements 16s .. 16s+15 */
                float dl = d * (float)(p[s] & 0xF), ml = dmin * (float)(p[s] >> 4);
                int h = s >> 3, j = (s >> 1) & 3;
                const uint8_t *q = p + 16 + 32 * h + 16 * (s & 1);
                for (int l = 0; l < 16; l++)
                    y[16 * s + l] = dl * (float)((q[l] >> (2 * j)) & 3) - ml;
            }
        }
        return;
    case QV_DTYPE_Q3_K:
        /* hmask[32], qs[64], scales[12] (16 six-bit scales, minus 32), f16 d. Element
         * i = 128h + 32j + l: low bits 2j of qs[32h + l], minus 4 unless bit 4h + j of
         * hmask[l] is set. */
        for (int64_t b = 0; b < n / 256; b++, p += 110, y += 256) {
            const uint8_t *hm = p, *qs = p + 32, *sc = p + 96;
            float d = qv_f16_to_f32(rd16(p + 108));
            for (int s = 0; s < 16; s++) { /* elements 16s .. 16s+15 */
                int lo = (sc[s & 7] >> (4 * (s >> 3))) & 0xF;
                int hi = (sc[8 + (s & 3)] >> (2 * (s >> 2))) & 3;
                float dl = d * (float)((lo | (hi << 4)) - 32);
                int h = s >> 3, j = (s >> 1) & 3;
                for (int l = 16 * (s & 1); l < 16 * (s & 1) + 16; l++) {
                    int q =
                        ((qs[32 * h + l] >> (2 * j)) & 3) - (((hm[l] >> (4 * h + j)) & 1) ? 0 : 4);
                    y[32 * (4 * h + j) + l] = dl * (float)q;
                }
            }
        }
        return;
    case QV_DTYPE_Q5_K:
        /* f16 d, dmin; scales[12] as Q4_K; qh[32]; qs[128]. Sub-block s = i / 32 of pair
         * c = s / 2: low nibble (s even) or high nibble of qs[32c + l], plus bit s of qh[l]
         * as 16. */
        for (int64_t b = 0; b < n / 256; b++, p += 176) {
            float d = qv_f16_to_f32(rd16(p)), dmin = qv_f16_to_f32(rd16(p + 2));
            const uint8_t *qh = p + 16, *qs = p + 48;
            for (int s = 0; s < 8; s++) {
                uint8_t sc, mn;
                get_scale_min_k4(s, p + 4, &sc, &mn);
                float d1 = d * sc, m1 = dmin * mn;
                for (int l = 0; l < 32; l++) {
                    int q = ((qs[32 * (s >> 1) + l] >> (4 * (s & 1))) & 0xF) |
                            (((qh[l] >> s) & 1) << 4);
                    *y++ = d1 * (float)q - m1;
                }
            }
        }
        return;
    case QV_DTYPE_IQ4_NL:
        for (int64_t b = 0; b < n / 32; b++, p += 18, y += 32) {
            float d = qv_f16_to_f32(rd16(p));
            for (int j = 0; j < 16; j++) {
                y[j] = d * (float)qv_iq4_values[p[2 + j] & 0xF];
                y[j + 16] = d * (float)qv_iq4_values[p[2 + j] >> 4];
            }
        }
        return;
    case QV_DTYPE_IQ4_XS:
        /* f16 d, u16 scales_h (2 high bits per sub-block), scales_l[4] (4 low bits), qs[128]:
         * sub-block s of 32 = IQ4_NL's nibble layout at qs + 16s, scale d * (ls - 32). */
        for (int64_t b = 0; b < n / 256; b++, p += 136) {
            float d = qv_f16_to_f32(rd16(p));
            uint16_t sh = rd16(p + 2);
            for (int s = 0; s < 8; s++, y += 32) {
                int ls = ((p[4 + s / 2] >> (4 * (s & 1))) & 0xF) | (((sh >> (2 * s)) & 3) << 4);
                float dl = d * (float)(ls - 32);
                const uint8_t *qs = p + 8 + 16 * s;
                for (int j = 0; j < 16; j++) {
                    y[j] = dl * (float)qv_iq4_values[qs[j] & 0xF];
                    y[j + 16] = dl * (float)qv_iq4_values[qs[j] >> 4];
                }
            }
        }
        return;
    case QV_DTYPE_COUNT: break;
    }
    QV_ASSERT(!"bad dtype");
}
