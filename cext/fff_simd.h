/* Inner loops of the CPU kernel, in C with GCC vector types: every loop works on four tokens at
 * once, whose four dot products are four independent vector accumulators (gcc would not reorder
 * one float sum into several without -ffast-math, and one accumulator waits on the add latency). */
#ifndef FFF_SIMD_H
#define FFF_SIMD_H
#include <math.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

enum { ACT_GELU = 0, ACT_GELU_TANH = 1, ACT_RELU = 2, ACT_SILU = 3 };

/* 8 floats; with -march=native this is one AVX2 register (two SSE or NEON ones elsewhere). */
typedef float fff_v8 __attribute__((vector_size(32), aligned(4), may_alias));

static inline float fff_act(float x, int kind) {
    switch (kind) {
    case ACT_GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case ACT_GELU_TANH: return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case ACT_RELU: return x > 0.f ? x : 0.f;
    default: return x / (1.f + expf(-x));
    }
}

/* Streaming stores are weakly ordered: fence them before the results are handed on. */
static inline void fff_store_fence(void) {
#ifdef __AVX__
    _mm_sfence();
#endif
}

/* z[j] = x[j] . w[j] for four pairs of H-vectors, read together: their misses overlap in the memory
 * system, where one token's reads would wait on each other's dot products. */
static inline void fff_dot4(const float *const *x, const float *const *w, long H, float *z) {
    fff_v8 s[4] = {{0}, {0}, {0}, {0}};
    long i = 0;
    for (; i + 8 <= H; i += 8)
        for (int j = 0; j < 4; j++) s[j] += *(const fff_v8 *)(x[j] + i) * *(const fff_v8 *)(w[j] + i);
    for (int j = 0; j < 4; j++) {
        fff_v8 v = s[j];
        float t = ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
        for (long r = i; r < H; r++) t += x[j][r] * w[j][r];  /* H not a multiple of 8 */
        z[j] = t;
    }
}

/* Four tokens descended together from nodes nd[0..3], which they leave at the nodes reached. */
static inline void fff_descend4(const float *const *x, long H, int levels, const float *node_w,
                                const float *node_b, long *nd) {
    for (int d = 0; d < levels; d++) {
        const float *w[4];
        float z[4];
        for (int j = 0; j < 4; j++) w[j] = node_w + nd[j] * H;
        fff_dot4(x, w, H, z);
        for (int j = 0; j < 4; j++) nd[j] = 2 * nd[j] + (z[j] + node_b[nd[j]] > 0.f ? 2 : 1);
    }
}

/* For the m <= 4 consecutive tokens at x0: the index, within its level, of the node each reaches
 * after `levels` decisions from the root (with levels = D: the leaf). Fewer than four tokens are
 * padded with copies of the last one. */
static inline void fff_route4(const float *x0, int m, long H, int levels, const float *node_w,
                              const float *node_b, int *reached) {
    const float *x[4];
    long nd[4] = {0, 0, 0, 0};
    for (int j = 0; j < 4; j++) x[j] = x0 + (j < m ? j : m - 1) * H;
    fff_descend4(x, H, levels, node_w, node_b, nd);
    for (int j = 0; j < m; j++) reached[j] = (int)(nd[j] - ((1L << levels) - 1));
}

/* The leaves of four tokens (token j: input xs[j], leaf ks[j], output streamed to ys[j]): the
 * neurons' dot products four tokens at a time, as in the descent, then each output row in one pass
 * over its leaf's bias and w2 rows. `h` holds 4 L floats. */
static inline void fff_leaf4(const float *const *xs, float *const *ys, const long *ks, long H, int L,
                             const float *w1, const float *b1, const float *w2, const float *leaf_b,
                             const float *out_b, int act, float *h) {
    for (int l = 0; l < L; l++) {
        const float *w[4];
        float z[4];
        for (int j = 0; j < 4; j++) w[j] = w1 + (ks[j] * L + l) * H;
        fff_dot4(xs, w, H, z);
        for (int j = 0; j < 4; j++) h[j * L + l] = fff_act(z[j] + b1[ks[j] * L + l], act);
    }
    /* One output row at a time: streaming four rows at once measured 1.6x slower (likely too few
     * write-combining buffers). */
    for (int j = 0; j < 4; j++) {
        const float *a2 = leaf_b + ks[j] * H, *v2 = w2 + ks[j] * L * H, *hj = h + j * L;
        float *y = ys[j];
        long i = 0;
#ifdef __AVX__
        if (((unsigned long)y & 31) == 0) /* streaming stores: no read-for-ownership of the row */
            for (; i + 8 <= H; i += 8) {
                fff_v8 a = *(const fff_v8 *)(a2 + i) + *(const fff_v8 *)(out_b + i);
                for (int l = 0; l < L; l++) a += hj[l] * *(const fff_v8 *)(v2 + l * H + i);
                _mm256_stream_ps(y + i, (__m256)a);
            }
#endif
        for (; i < H; i++) {
            float a = a2[i] + out_b[i];
            for (int l = 0; l < L; l++) a += hj[l] * v2[l * H + i];
            y[i] = a;
        }
    }
}

/* The tokens idx[0..n) of one subtree, whose root is node `root`, `levels` above the leaves:
 * four tokens at a time descend the rest of the way and run their leaves (a last group of fewer
 * is padded with copies of its last token, whose outputs go to the start of `scratch`). The
 * subtree's rows are read from memory once and then served from cache to all of its tokens.
 * `scratch` holds H + 8 + 4 L floats, 32-byte aligned: a row, then leaf4's h. */
static inline void fff_subtree(const float *x, float *out, float *scratch, const long *idx, long n, long root,
                               int levels, long H, int D, int L, const float *node_w, const float *node_b,
                               const float *w1, const float *b1, const float *w2, const float *leaf_b,
                               const float *out_b, int act) {
    long first_leaf = (1L << D) - 1;
    for (long i = 0; i < n; i += 4) {
        const float *xs[4];
        float *ys[4];
        long nd[4] = {root, root, root, root};
        for (int j = 0; j < 4; j++) {
            int real = i + j < n;
            xs[j] = x + idx[real ? i + j : n - 1] * H;
            ys[j] = real ? out + idx[i + j] * H : scratch;
        }
        fff_descend4(xs, H, levels, node_w, node_b, nd);
        for (int j = 0; j < 4; j++) nd[j] -= first_leaf;
        fff_leaf4(xs, ys, nd, H, L, w1, b1, w2, leaf_b, out_b, act, scratch + ((H + 7) & ~7L));
    }
}
#endif
