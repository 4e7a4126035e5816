/* Inner loops of the CPU kernel. Written in C so that `#pragma omp simd` can vectorize the
 * reduction (gcc will not reorder a float sum without it, and -ffast-math would change more). */
#ifndef FFF_SIMD_H
#define FFF_SIMD_H
#include <math.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

enum { ACT_GELU = 0, ACT_GELU_TANH = 1, ACT_RELU = 2, ACT_SILU = 3 };

/* 8 floats; with -march=native this is one AVX2 register (two SSE or NEON ones elsewhere). */
typedef float fff_v8 __attribute__((vector_size(32), aligned(4), may_alias));

/* Dot product with four independent vector accumulators: a single accumulator would wait on
 * the add latency every 8 floats, which measured 3x slower on the dense-shaped rows we read. */
static inline float fff_dot(const float *__restrict a, const float *__restrict b, long n) {
    fff_v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    long i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 += *(const fff_v8 *)(a + i) * *(const fff_v8 *)(b + i);
        s1 += *(const fff_v8 *)(a + i + 8) * *(const fff_v8 *)(b + i + 8);
        s2 += *(const fff_v8 *)(a + i + 16) * *(const fff_v8 *)(b + i + 16);
        s3 += *(const fff_v8 *)(a + i + 24) * *(const fff_v8 *)(b + i + 24);
    }
    fff_v8 v = (s0 + s1) + (s2 + s3);
    float s = ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y = a + b */
static inline void fff_add(const float *__restrict a, const float *__restrict b, float *__restrict y, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = a[i] + b[i];
}

/* y += a * x */
static inline void fff_axpy(float a, const float *__restrict x, float *__restrict y, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] += a * x[i];
}

static inline float fff_act(float x, int kind) {
    switch (kind) {
    case ACT_GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case ACT_GELU_TANH: return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case ACT_RELU: return x > 0.f ? x : 0.f;
    default: return x / (1.f + expf(-x));
    }
}

/* y = a + h * x, written with streaming stores: the output row is not read first (no
 * read-for-ownership) and does not evict the weights from the cache. */
static inline void fff_axpy_stream(float h, const float *__restrict x, const float *__restrict a,
                                   float *__restrict y, long n) {
    long i = 0;
#ifdef __AVX__
    if (((unsigned long)y & 31) == 0) {
        for (; i + 8 <= n; i += 8) {
            fff_v8 v = *(const fff_v8 *)(a + i) + h * *(const fff_v8 *)(x + i);
            _mm256_stream_ps(y + i, (__m256)v);
        }
    }
#endif
    for (; i < n; i++) y[i] = a[i] + h * x[i];
}

/* Streaming stores are weakly ordered: fence them before the results are handed on. */
static inline void fff_store_fence(void) {
#ifdef __AVX__
    _mm_sfence();
#endif
}

/* Node reached from `node` (breadth-first index: children 2n+1, 2n+2) after `levels` decisions. */
static inline long fff_descend(const float *xt, long H, int levels, long node, const float *node_w,
                               const float *node_b) {
    for (int d = 0; d < levels; d++)
        node = 2 * node + (fff_dot(xt, node_w + node * H, H) + node_b[node] > 0.f ? 2 : 1);
    return node;
}

/* Four tokens descended together from nodes nd[0..3], which they leave at the nodes reached:
 * each level's four row reads are independent and overlap in the memory system, where one
 * token's reads wait on each other's dot products. */
static inline void fff_descend4(const float *const *x, long H, int levels, const float *node_w,
                                const float *node_b, long *nd) {
    for (int d = 0; d < levels; d++) {
        const float *w[4];
        fff_v8 s[4] = {{0}, {0}, {0}, {0}};
        for (int j = 0; j < 4; j++) w[j] = node_w + nd[j] * H;
        long i = 0;
        for (; i + 8 <= H; i += 8)
            for (int j = 0; j < 4; j++) s[j] += *(const fff_v8 *)(x[j] + i) * *(const fff_v8 *)(w[j] + i);
        for (int j = 0; j < 4; j++) {
            fff_v8 v = s[j];
            float z = ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
            for (long r = i; r < H; r++) z += x[j][r] * w[j][r];
            nd[j] = 2 * nd[j] + (z + node_b[nd[j]] > 0.f ? 2 : 1);
        }
    }
}

/* For the four consecutive tokens at x0: the index, within its level, of the node each reaches
 * after `levels` decisions from the root (with levels = D: the leaf). */
static inline void fff_route4(const float *x0, long H, int levels, const float *node_w, const float *node_b,
                              int *reached) {
    const float *x[4] = {x0, x0 + H, x0 + 2 * H, x0 + 3 * H};
    long nd[4] = {0, 0, 0, 0};
    fff_descend4(x, H, levels, node_w, node_b, nd);
    for (int j = 0; j < 4; j++) reached[j] = (int)(nd[j] - ((1L << levels) - 1));
}

/* Leaf k's output for one token, streamed to yt. `acc` is an H-float scratch row of the calling
 * thread (stays in L1). */
static inline void fff_leaf(const float *xt, float *yt, float *acc, long H, int L, long k, const float *w1,
                            const float *b1, const float *w2, const float *leaf_b, const float *out_b, int act) {
    fff_add(leaf_b + k * H, out_b, acc, H);
    for (int j = 0; j < L; j++) {
        float h = fff_act(fff_dot(xt, w1 + (k * L + j) * H, H) + b1[k * L + j], act);
        if (j + 1 < L)
            fff_axpy(h, w2 + (k * L + j) * H, acc, H);
        else
            fff_axpy_stream(h, w2 + (k * L + j) * H, acc, yt, H);
    }
}

/* The tokens idx[0..n) of one subtree, whose root is node `root`, `levels` above the leaves:
 * descend the rest of the way four tokens at a time, then run each token's leaf. The subtree's
 * rows are read from memory once and then served from cache to all of its tokens. */
static inline void fff_subtree(const float *x, float *out, float *acc, const long *idx, long n, long root,
                               int levels, long H, int D, int L, const float *node_w, const float *node_b,
                               const float *w1, const float *b1, const float *w2, const float *leaf_b,
                               const float *out_b, int act) {
    long first_leaf = (1L << D) - 1, i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *xs[4];
        long nd[4] = {root, root, root, root};
        for (int j = 0; j < 4; j++) xs[j] = x + idx[i + j] * H;
        fff_descend4(xs, H, levels, node_w, node_b, nd);
        for (int j = 0; j < 4; j++)
            fff_leaf(xs[j], out + idx[i + j] * H, acc, H, L, nd[j] - first_leaf, w1, b1, w2, leaf_b, out_b, act);
    }
    for (; i < n; i++) {
        const float *xt = x + idx[i] * H;
        long k = fff_descend(xt, H, levels, root, node_w, node_b) - first_leaf;
        fff_leaf(xt, out + idx[i] * H, acc, H, L, k, w1, b1, w2, leaf_b, out_b, act);
    }
}
#endif
