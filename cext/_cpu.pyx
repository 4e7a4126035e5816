# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Hard forward of an FFF layer on the CPU, float32 (layout: fffconvert/layer.py).

Two schedules, both reading the weights in place, releasing the GIL for the whole batch and
allocating nothing per token:
- per token (small batches): each thread takes a run of tokens; a token descends the tree, then
  runs its leaf in an L1 scratch row and streams the result to its output row;
- grouped by leaf (large batches): first every token's leaf (the tree's rows, a sixth of the
  layer, stay in cache), then, leaf by leaf, that leaf's tokens. A leaf's rows are then read once
  per batch instead of once per token, and the next addresses no longer wait on a dot product.
"""
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc, calloc
from libc.stdint cimport int32_t, int64_t, uintptr_t

import torch

cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)

cdef extern from "fff_simd.h" nogil:
    long fff_route(const float *xt, long H, int D, const float *node_w, const float *node_b)
    void fff_route4(const float *x0, long H, int D, const float *node_w, const float *node_b, int *leaf)
    void fff_leaf(const float *xt, float *yt, float *acc, long H, int L, long k, const float *w1,
                  const float *b1, const float *w2, const float *leaf_b, const float *out_b, int act)
    void fff_store_fence()

ACTIVATION_CODES = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "silu": 3}


cdef float *_scratch(int64_t H) noexcept nogil:
    return <float *> aligned_alloc(64, ((H * sizeof(float) + 63) // 64) * 64)


cdef void _per_token(const float *x, float *out, int64_t n, int64_t H, int D, int L,
                     const float *node_w, const float *node_b, const float *w1, const float *b1,
                     const float *w2, const float *leaf_b, const float *out_b, int act, int threads) noexcept nogil:
    cdef int64_t t
    cdef float *acc
    with parallel(num_threads=threads):
        acc = _scratch(H)  # one per thread, not per token
        for t in prange(n, schedule="static"):
            fff_leaf(x + t * H, out + t * H, acc, H, L, fff_route(x + t * H, H, D, node_w, node_b),
                     w1, b1, w2, leaf_b, out_b, act)
        fff_store_fence()
        free(acc)


cdef int _grouped(const float *x, float *out, int64_t n, int64_t H, int D, int L,
                  const float *node_w, const float *node_b, const float *w1, const float *b1,
                  const float *w2, const float *leaf_b, const float *out_b, int act, int threads) noexcept nogil:
    cdef int64_t t, i, k, K = 1 << D
    cdef float *acc
    cdef int32_t *leaf = <int32_t *> malloc(n * sizeof(int32_t))
    cdef int64_t *order = <int64_t *> malloc(n * sizeof(int64_t))
    cdef int64_t *start = <int64_t *> calloc(K + 1, sizeof(int64_t))
    if leaf == NULL or order == NULL or start == NULL:
        free(leaf); free(order); free(start)
        return -1
    cdef int64_t quads = n // 4
    with parallel(num_threads=threads):
        for i in prange(quads, schedule="static"):
            fff_route4(x + 4 * i * H, H, D, node_w, node_b, <int *> leaf + 4 * i)
    for t in range(4 * quads, n):
        leaf[t] = <int32_t> fff_route(x + t * H, H, D, node_w, node_b)
    for t in range(n):  # counting sort of the tokens by leaf: start[k] .. start[k+1] are leaf k's
        start[leaf[t] + 1] += 1
    for k in range(K):
        start[k + 1] += start[k]
    for t in range(n):
        order[start[leaf[t]]] = t
        start[leaf[t]] += 1
    for k in range(K, 0, -1):  # the fill advanced each start to the next leaf's: shift back
        start[k] = start[k - 1]
    start[0] = 0
    with parallel(num_threads=threads):
        acc = _scratch(H)
        for k in prange(K, schedule="dynamic", chunksize=8):
            for i in range(start[k], start[k + 1]):
                fff_leaf(x + order[i] * H, out + order[i] * H, acc, H, L, k, w1, b1, w2, leaf_b, out_b, act)
        fff_store_fence()
        free(acc)
    free(leaf); free(order); free(start)
    return 0


# Batches of at least this many tokens per leaf take the grouped schedule: timed side by side at
# depth 11, H=768 on 2 threads, it was as fast at 128 tokens and faster from 512 (0.50 vs 0.60 ms).
GROUP_MIN_TOKENS_PER_LEAF = 0.25


def fff_forward(x, node_weight, node_bias, w1, b1, w2, leaf_bias, out_bias, str activation, out=None, group=None):
    """y = FFF(x) for x [N, H] float32 contiguous; all weights float32 contiguous, on the CPU.
    `out`, if given, is a contiguous float32 [N, H] tensor to write into. `group` forces the
    leaf-grouped (True) or the per-token (False) schedule; None picks by batch size."""
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
    cdef int status = 0
    cdef bint grouped = n >= GROUP_MIN_TOKENS_PER_LEAF * (1 << D) if group is None else group
    with nogil:
        if grouped:
            status = _grouped(<const float *> px, <float *> po, n, H, D, L, <const float *> pnw, <const float *> pnb,
                              <const float *> pw1, <const float *> pb1, <const float *> pw2, <const float *> plb,
                              <const float *> pob, act, threads)
        else:
            _per_token(<const float *> px, <float *> po, n, H, D, L, <const float *> pnw, <const float *> pnb,
                       <const float *> pw1, <const float *> pb1, <const float *> pw2, <const float *> plb,
                       <const float *> pob, act, threads)
    if status:
        raise MemoryError("fff_forward: no memory for the token order")
    return out
