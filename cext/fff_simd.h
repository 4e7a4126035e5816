/* Inner loops of the CPU kernel. Written in C so that `#pragma omp simd` can vectorize the
 * reduction (gcc will not reorder a float sum without it, and -ffast-math would change more). */
#ifndef FFF_SIMD_H
#define FFF_SIMD_H
#include <math.h>

enum { ACT_GELU = 0, ACT_GELU_TANH = 1, ACT_RELU = 2, ACT_SILU = 3 };

/* 8 floats; with -march=native this is one AVX2 register (two SSE or NEON ones elsewhere). */
typedef float fff_v8 __attribute__((vector_size(32), aligned(4), may_alias));

/* Dot product with four independent vector accumulators: a single accumulator would wait on
 * the add latency every 8 floats, which measured 3x slower on the dense-shaped rows we read. */
static inline float fff_dot(const float *restrict a, const float *restrict b, long n) {
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
static inline void fff_add(const float *restrict a, const float *restrict b, float *restrict y, long n) {
#pragma omp simd
    for (long i = 0; i < n; i++) y[i] = a[i] + b[i];
}

/* y += a * x */
static inline void fff_axpy(float a, const float *restrict x, float *restrict y, long n) {
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
#endif
