/* glmv's CPU kernels for 16-bit (bfloat16) decoding: the decoder layer's small steps fused, and paged decode attention.
 *
 * Built by glmv/cpu/build.py for the machine it runs on (-O3 -march=native -fopenmp, fast-math at compile time only)
 * and called through ctypes (glmv/cpu/ops.py). OpenMP here binds to the libgomp that PyTorch already loaded, so these
 * loops share PyTorch's thread pool and its torch.set_num_threads count.
 *
 * Rounding follows eager PyTorch's bf16 arithmetic where the torch path rounds (glmv/kernels/triton_fused.py's
 * docstring lists the formulas): products and sums in float32, results rounded to bf16 (nearest even) at the same
 * points. Decode attention keeps scores, softmax and the weighted sum in float32 and rounds once at the end.
 * Strides are in elements. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

static inline float bf2f(bf16 v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline bf16 f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u; /* a quiet NaN stays NaN */
    return (bf16)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

static inline float round_bf(float f) { return bf2f(f2bf(f)); }

/* exp(x) for float32 within about 2 ulp (0 below e^-80), branch-free so that loops over it vectorize (libm's expf
 * does not here): x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 polynomial (Cephes' coefficients), 2^n by
 * exponent bits. */
static inline float exp_approx(float x) {
    float in = x;
    x = x < -87.0f ? -87.0f : x; /* compare-selects (not fminf/fmaxf) so the loop vectorizes */
    x = x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    /* below e^-80 the result is 0: results near float's smallest normal would make the products that use them
     * subnormal, which x86 computes tens of times slower (softmax of scores far below the maximum does this) */
    return in < -80.0f ? 0.0f : p * scale;
}

/* out = w * bf16(h * rsqrt(mean(h^2) + eps)), h = float row. */
static void rms_row(const float *h, const bf16 *w, bf16 *out, int n, float eps) {
    float ss = 0.f;
    for (int i = 0; i < n; i++) ss += h[i] * h[i];
    float r = 1.f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = f2bf(round_bf(h[i] * r) * bf2f(w[i]));
}

void glmv_rms_norm(const bf16 *x, int64_t sx, const bf16 *w, bf16 *out, int64_t so, int64_t rows, int n, float eps) {
#pragma omp parallel for if (rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        float h[n];
        for (int i = 0; i < n; i++) h[i] = bf2f(x[r * sx + i]);
        rms_row(h, w, out + r * so, n, eps);
    }
}

/* hidden = res + rms_norm(x, w_post); normed = rms_norm(hidden, w_next) */
void glmv_residual_rms_norm(const bf16 *x, int64_t sx, const bf16 *res, int64_t sr, const bf16 *w_post,
                            const bf16 *w_next, bf16 *hidden, int64_t sh, bf16 *normed, int64_t sn, int64_t rows, int n,
                            float eps) {
#pragma omp parallel for if (rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        float h[n];
        bf16 post[n];
        for (int i = 0; i < n; i++) h[i] = bf2f(x[r * sx + i]);
        rms_row(h, w_post, post, n, eps);
        bf16 *hid = hidden + r * sh;
        for (int i = 0; i < n; i++) {
            bf16 v = f2bf(bf2f(res[r * sr + i]) + bf2f(post[i]));
            hid[i] = v;
            h[i] = bf2f(v);
        }
        rms_row(h, w_next, normed + r * sn, n, eps);
    }
}

/* out = up * bf16(silu(gate)), gate_up = [rows, 2 * inter] */
void glmv_silu_mul(const bf16 *gu, int64_t sg, bf16 *out, int64_t so, int64_t rows, int inter) {
    const int chunk = 256;
    int64_t per_row = (inter + chunk - 1) / chunk;
#pragma omp parallel for if (rows * inter > 4096)
    for (int64_t task = 0; task < rows * per_row; task++) {
        int64_t r = task / per_row;
        int start = (int)(task % per_row) * chunk;
        int end = start + chunk < inter ? start + chunk : inter;
        const bf16 *g = gu + r * sg, *u = g + inter;
        bf16 *o = out + r * so;
        for (int i = start; i < end; i++) {
            float gv = bf2f(g[i]);
            float act = round_bf(gv / (1.f + exp_approx(-gv)));
            o[i] = f2bf(bf2f(u[i]) * act);
        }
    }
}

/* One head row: pairs (2j, 2j+1), j < pairs, turn by angle j (eager bf16 rounding of each product and sum). */
static inline void rotate_row(const bf16 *x, bf16 *out, const float *c, const float *s, int pairs, int dim) {
    for (int j = 0; j < pairs; j++) {
        float x1 = bf2f(x[2 * j]), x2 = bf2f(x[2 * j + 1]);
        out[2 * j] = f2bf(round_bf(x1 * c[j]) - round_bf(x2 * s[j]));
        out[2 * j + 1] = f2bf(round_bf(x2 * c[j]) + round_bf(x1 * s[j]));
    }
    for (int i = 2 * pairs; i < dim; i++) out[i] = x[i];
}

void glmv_rotary_write_kv(const bf16 *q, int64_t sqt, int64_t sqh, const bf16 *k, int64_t skt, int64_t skh,
                          const bf16 *v, int64_t svt, int64_t svh, const bf16 *cos_, int64_t sct, const bf16 *sin_,
                          int64_t sst, bf16 *q_out, bf16 *k_cache, bf16 *v_cache, int64_t scb, int64_t scs,
                          int64_t sch, const int64_t *slots, bf16 *k_out, int64_t skot, int64_t skoh, bf16 *v_out,
                          int64_t svot, int64_t svoh, int64_t tokens, int heads, int kv_heads, int dim, int pairs,
                          int block_size) {
#pragma omp parallel for if (tokens > 1)
    for (int64_t t = 0; t < tokens; t++) {
        float c[pairs], s[pairs];
        for (int j = 0; j < pairs; j++) {
            c[j] = bf2f(cos_[t * sct + j]);
            s[j] = bf2f(sin_[t * sst + j]);
        }
        for (int h = 0; h < heads; h++)
            rotate_row(q + t * sqt + h * sqh, q_out + (t * heads + h) * dim, c, s, pairs, dim);
        int64_t slot = slots[t];
        int64_t base = slot >= 0 ? (slot / block_size) * scb + (slot % block_size) * scs : 0;
        for (int h = 0; h < kv_heads; h++) {
            bf16 rot[dim];
            rotate_row(k + t * skt + h * skh, rot, c, s, pairs, dim);
            if (slot >= 0) {
                memcpy(k_cache + base + h * sch, rot, sizeof(bf16) * dim);
                memcpy(v_cache + base + h * sch, v + t * svt + h * svh, sizeof(bf16) * dim);
            }
            if (k_out) memcpy(k_out + t * skot + h * skoh, rot, sizeof(bf16) * dim);
            if (v_out) memcpy(v_out + t * svot + h * svoh, v + t * svt + h * svh, sizeof(bf16) * dim);
        }
    }
}

/* Rows of a sequence's keys or values sit a block apart in memory, so the hardware's stream prefetchers miss them
 * and every row is a memory round trip: ask for the row PREFETCH_AHEAD tokens ahead (measured on 2 EPYC cores,
 * decode attention with its KV out of cache: 1.1 ms without; bench/notes/cpu_engine.md). */
#define PREFETCH_AHEAD 16

static inline void prefetch_row(const bf16 *row, int dim) {
    for (int i = 0; i < dim; i += 32) __builtin_prefetch(row + i, 0, 3); /* 32 bf16 = one 64-byte line */
}

/* out[g] = sum_d qT[d][g] * k[d] for G = 8 or 16 heads as one vector, DIM a multiple of 4 (GCC vector types: a
 * broadcast multiply-add per dimension; left to itself the compiler shuffles the head/dimension loops instead). */
typedef float vec8 __attribute__((vector_size(32), aligned(4)));
typedef float vec16 __attribute__((vector_size(64), aligned(4)));

/* four independent sums: one chain of dependent adds would wait out the add latency on every dimension */
#define QK_HEADS(VEC, W)                                                                                          \
    do {                                                                                                          \
        VEC a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                                               \
        for (int d = 0; d < DIM; d += 4) {                                                                        \
            a0 += *(const VEC *)(qT + d * W) * k[d];                                                              \
            a1 += *(const VEC *)(qT + (d + 1) * W) * k[d + 1];                                                    \
            a2 += *(const VEC *)(qT + (d + 2) * W) * k[d + 2];                                                    \
            a3 += *(const VEC *)(qT + (d + 3) * W) * k[d + 3];                                                    \
        }                                                                                                         \
        *(VEC *)out = (a0 + a1) + (a2 + a3);                                                                      \
    } while (0)

static inline __attribute__((always_inline)) void qk_heads(const float *qT, const float *k, const int DIM,
                                                           const int G, float *out) {
    if (G == 8)
        QK_HEADS(vec8, 8);
    else
        QK_HEADS(vec16, 16);
}

#if defined(__AVX512BF16__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define GLMV_BF16_DOT 1
/* With AVX-512 BF16, a key row's scores come from bf16 dot-product instructions on the raw bf16 q and k (32 products
 * an instruction, exact, summed in float32), one 16-lane partial sum per head, folded to one lane each by an add
 * tree shared by 8 heads: about a third of the instructions of the broadcast form above. */
static inline __m256 fold16(__m512 v) { return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)); }

static inline __m256 sum8_lanes(const __m256 y[8]) { /* out[g] = sum of y[g]'s 8 lanes */
    __m256 t0 = _mm256_hadd_ps(y[0], y[1]), t1 = _mm256_hadd_ps(y[2], y[3]);
    __m256 t2 = _mm256_hadd_ps(y[4], y[5]), t3 = _mm256_hadd_ps(y[6], y[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* out[g] = scale * sum_d qb[g][d] * k[d] for G = 8 or 16 heads, DIM = 32, 64, 96 or 128. */
static inline __attribute__((always_inline)) void qk_bf16(const bf16 *qb, const bf16 *k, const int DIM, const int G,
                                                          float scale, float *out) {
    __m512bh kv[4];
    for (int c = 0; c < DIM / 32; c++) kv[c] = (__m512bh)_mm512_loadu_si512(k + 32 * c);
    for (int h = 0; h < G; h += 8) {
        __m256 y[8];
        for (int g = 0; g < 8; g++) {
            __m512 acc = _mm512_setzero_ps();
            for (int c = 0; c < DIM / 32; c++)
                acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(qb + (h + g) * DIM + 32 * c), kv[c]);
            y[g] = fold16(acc);
        }
        _mm256_storeu_ps(out + h, _mm256_mul_ps(sum8_lanes(y), _mm256_set1_ps(scale)));
    }
}
#endif

/* The work of one (sequence, kv head): its G query heads over the sequence's `len` keys and values.
 * QK: scores[t][g] for the G heads at once (bf16 dot products where the CPU has them, else one float multiply-add
 * per head dimension across the heads).
 * Softmax per head. PV: the value rows converted to float once (vbuf), then for each head a DIM-wide accumulator
 * kept in registers over all tokens. Inlined with G and DIM constants for the model's common shapes (the
 * compiler then unrolls the head and dimension loops), and with run-time values for any other shape. */
static inline __attribute__((always_inline)) void attend_one(const float *qT, const bf16 *qb, float scale,
                                                             const bf16 *k_cache, const bf16 *v_cache,
                                                             const int64_t *rows, int len, float *scores,
                                                             float *vbuf, bf16 *out, const int G, const int DIM) {
    float kf[DIM], m[G], sum[G];
    for (int t = 0; t < len && t < PREFETCH_AHEAD; t++) {
        prefetch_row(k_cache + rows[t], DIM);
        prefetch_row(v_cache + rows[t], DIM);
    }
    for (int g = 0; g < G; g++) m[g] = -INFINITY;
    for (int t = 0; t < len; t++) {
        if (t + PREFETCH_AHEAD < len) { /* this row's value too: the value pass then reads it from cache */
            prefetch_row(k_cache + rows[t + PREFETCH_AHEAD], DIM);
            prefetch_row(v_cache + rows[t + PREFETCH_AHEAD], DIM);
        }
        const bf16 *kr = k_cache + rows[t];
        float acc[G];
#ifdef GLMV_BF16_DOT
        if (qb != NULL && (G == 8 || G == 16) && DIM % 32 == 0 && DIM <= 128) {
            qk_bf16(qb, kr, DIM, G, scale, acc);
        } else
#endif
        {
            for (int d = 0; d < DIM; d++) kf[d] = bf2f(kr[d]);
            if ((G == 8 || G == 16) && DIM % 4 == 0) {
                qk_heads(qT, kf, DIM, G, acc);
            } else {
                for (int g = 0; g < G; g++) acc[g] = 0.f;
                for (int d = 0; d < DIM; d++)
                    for (int g = 0; g < G; g++) acc[g] += qT[d * G + g] * kf[d];
            }
        }
        for (int g = 0; g < G; g++) {
            scores[t * G + g] = acc[g];
            m[g] = acc[g] > m[g] ? acc[g] : m[g];
        }
    }
    /* three simple passes (shift, exp over the flat array, per-head sums) so that each one vectorizes */
    for (int t = 0; t < len; t++)
        for (int g = 0; g < G; g++) scores[t * G + g] -= m[g];
    for (int i = 0; i < len * G; i++) scores[i] = exp_approx(scores[i]);
    for (int g = 0; g < G; g++) sum[g] = 0.f;
    for (int t = 0; t < len; t++)
        for (int g = 0; g < G; g++) sum[g] += scores[t * G + g];
    for (int t = 0; t < len; t++) {
        const bf16 *vr = v_cache + rows[t];
        for (int d = 0; d < DIM; d++) vbuf[t * DIM + d] = bf2f(vr[d]);
    }
    for (int g = 0; g < G; g++) {
        float acc[DIM];
        for (int d = 0; d < DIM; d++) acc[d] = 0.f;
        for (int t = 0; t < len; t++) {
            float p = scores[t * G + g];
            for (int d = 0; d < DIM; d++) acc[d] += p * vbuf[t * DIM + d];
        }
        float inv = sum[g] > 0.f ? 1.f / sum[g] : 0.f;
        for (int d = 0; d < DIM; d++) out[g * DIM + d] = f2bf(acc[d] * inv);
    }
}

/* One query token per sequence over its paged KV. q [B, heads, dim] (strided), out [B, heads, dim] contiguous.
 * Work item = (sequence, kv head): its `group` query heads share every K/V row read (attend_one). */
void glmv_paged_decode_attention(const bf16 *q, int64_t sqb, int64_t sqh, const bf16 *k_cache, const bf16 *v_cache,
                                 int64_t scb, int64_t scs, int64_t sch, const int32_t *tables, int64_t stb,
                                 const int32_t *seq_lens, bf16 *out, int64_t batch, int heads, int kv_heads, int dim,
                                 int block_size, float scale) {
    const int group = heads / kv_heads;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < batch * kv_heads; task++) {
        int64_t b = task / kv_heads;
        int kh = (int)(task % kv_heads);
        int len = seq_lens[b];
        size_t n = (size_t)(len > 0 ? len : 1);
        float *scores = (float *)malloc(sizeof(float) * n * (size_t)group);
        float *vbuf = (float *)malloc(sizeof(float) * n * (size_t)dim);
        int64_t *rows = (int64_t *)malloc(sizeof(int64_t) * n);
        float qT[dim * group];
        for (int g = 0; g < group; g++)
            for (int d = 0; d < dim; d++) qT[d * group + g] = bf2f(q[b * sqb + (kh * group + g) * sqh + d]) * scale;
        /* each token's row offset, walking the block table once */
        const int32_t *table = tables + b * stb;
        for (int t = 0, blk = 0; t < len; blk++) {
            int64_t base = (int64_t)table[blk] * scb + kh * sch;
            for (int o = 0; o < block_size && t < len; o++, t++) rows[t] = base + o * scs;
        }
        bf16 *o = out + (b * heads + kh * group) * dim;
        const bf16 *qb = sqh == dim ? q + b * sqb + kh * group * sqh : NULL; /* the group's q rows, back to back */
        if (group == 8 && dim == 64)
            attend_one(qT, qb, scale, k_cache, v_cache, rows, len, scores, vbuf, o, 8, 64);
        else if (group == 16 && dim == 128)
            attend_one(qT, qb, scale, k_cache, v_cache, rows, len, scores, vbuf, o, 16, 128);
        else if (group == 8 && dim == 128)
            attend_one(qT, qb, scale, k_cache, v_cache, rows, len, scores, vbuf, o, 8, 128);
        else
            attend_one(qT, qb, scale, k_cache, v_cache, rows, len, scores, vbuf, o, group, dim);
        free(scores);
        free(vbuf);
        free(rows);
    }
}
