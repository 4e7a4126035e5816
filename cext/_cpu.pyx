# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Hard forward of an FFF layer on the CPU, float32 (layout: fffconvert/layer.py).

Each thread takes a contiguous run of tokens; per token: descend the tree (D dot products),
then run the one leaf (L dot products, L axpys) on leaf_bias[leaf] + out_bias in an L1 scratch
row, and stream the result to the output row. Weights are read in place through their data
pointers; nothing is allocated per token, and the GIL is released for the whole batch.
"""
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free
from libc.stdint cimport int64_t, uintptr_t

import torch

cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)

cdef extern from "fff_simd.h" nogil:
    float fff_dot(const float *a, const float *b, long n)
    void fff_add(const float *a, const float *b, float *y, long n)
    void fff_axpy(float a, const float *x, float *y, long n)
    float fff_act(float x, int kind)
    void fff_forward_token(const float *xt, float *yt, float *acc, long H, int D, int L, const float *node_w,
                           const float *node_b, const float *w1, const float *b1, const float *w2,
                           const float *leaf_b, const float *out_b, int act)
    void fff_store_fence()

ACTIVATION_CODES = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "silu": 3}


cdef void _forward(const float *x, float *out, int64_t n, int64_t H, int D, int L,
                   const float *node_w, const float *node_b, const float *w1, const float *b1,
                   const float *w2, const float *leaf_b, const float *out_b, int act, int threads) noexcept nogil:
    cdef int64_t t
    cdef float *acc
    with parallel(num_threads=threads):
        acc = <float *> aligned_alloc(64, ((H * sizeof(float) + 63) // 64) * 64)  # one per thread, not per token
        for t in prange(n, schedule="static"):
            fff_forward_token(x + t * H, out + t * H, acc, H, D, L, node_w, node_b, w1, b1, w2, leaf_b, out_b, act)
        fff_store_fence()
        free(acc)


def fff_forward(x, node_weight, node_bias, w1, b1, w2, leaf_bias, out_bias, str activation, out=None):
    """y = FFF(x) for x [N, H] float32 contiguous; all weights float32 contiguous, on the CPU.
    `out`, if given, is a contiguous float32 [N, H] tensor to write into."""
    cdef int64_t n = x.shape[0], H = x.shape[1]
    cdef int D = (node_weight.shape[0] + 1).bit_length() - 1
    cdef int L = w1.shape[1]
    cdef int threads = max(1, min(torch.get_num_threads(), (n + 63) // 64))  # >= 64 tokens a thread
    for name, t in (("node_weight", node_weight), ("node_bias", node_bias), ("w1", w1), ("b1", b1),
                    ("w2", w2), ("leaf_bias", leaf_bias), ("out_bias", out_bias), ("x", x)):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(f"fff_forward: {name} must be a contiguous float32 CPU tensor")
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError("fff_forward: out must be a contiguous float32 tensor shaped like x")
    cdef uintptr_t px = x.data_ptr(), po = out.data_ptr()
    cdef uintptr_t pnw = node_weight.data_ptr(), pnb = node_bias.data_ptr()
    cdef uintptr_t pw1 = w1.data_ptr(), pb1 = b1.data_ptr(), pw2 = w2.data_ptr()
    cdef uintptr_t plb = leaf_bias.data_ptr(), pob = out_bias.data_ptr()
    cdef int act = ACTIVATION_CODES[activation]
    with nogil:
        _forward(<const float *> px, <float *> po, n, H, D, L, <const float *> pnw, <const float *> pnb,
                 <const float *> pw1, <const float *> pb1, <const float *> pw2, <const float *> plb,
                 <const float *> pob, act, threads)
    return out
