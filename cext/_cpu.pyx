# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Hard forward of an FFF layer on the CPU, float32 (layout: fffconvert/layer.py).

Two schedules, both reading the weights in place, releasing the GIL for the whole batch and
allocating nothing per token:
- per token (small batches): each thread takes runs of four tokens, which descend the tree
  together, then run their four leaves together and stream the results to their rows;
- grouped by subtree (large batches): first every token descends the top of the tree (its rows
  stay in cache), to the root of a subtree whose rows, nodes and leaves, fit in L2; then, subtree
  by subtree, that subtree's tokens finish the descent and run their leaves. Each row below the
  top is then read from memory once per batch instead of once per token.
"""
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc, calloc
from libc.stdint cimport int32_t, int64_t, uintptr_t

import torch

cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)

cdef extern from "fff_simd.h" nogil:
    void fff_route4(const float *x0, int m, long H, int levels, const float *node_w, const float *node_b,
                    int *reached)
    void fff_subtree(const float *x, float *out, float *scratch, const long *idx, long n, long root, int levels,
                     long H, int D, int L, const float *node_w, const float *node_b, const float *w1,
                     const float *b1, const float *w2, const float *leaf_b, const float *out_b, int act)
    void fff_store_fence()

ACTIVATION_CODES = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "silu": 3}


cdef float *_scratch(int64_t H, int L) noexcept nogil:
    """A thread's scratch for fff_subtree: H + 8 + 4 L floats, 64-byte aligned."""
    return <float *> aligned_alloc(64, (((H + 8 + 4 * L) * sizeof(float) + 63) // 64) * 64)


cdef int _per_token(const float *x, float *out, int64_t n, int64_t H, int D, int L,
                    const float *node_w, const float *node_b, const float *w1, const float *b1,
                    const float *w2, const float *leaf_b, const float *out_b, int act, int threads) noexcept nogil:
    cdef int64_t t
    cdef float *scratch
    cdef long *idx = <long *> malloc(max(n, 1) * sizeof(long))
    if idx == NULL:
        return -1
    for t in range(n):
        idx[t] = t
    with parallel(num_threads=threads):
        scratch = _scratch(H, L)  # one per thread, not per token
        for t in prange((n + 3) // 4, schedule="static"):  # four tokens at a time, as in a subtree
            fff_subtree(x, out, scratch, idx + 4 * t, min(4, n - 4 * t), 0, D, H, D, L, node_w, node_b,
                        w1, b1, w2, leaf_b, out_b, act)
        fff_store_fence()
        free(scratch)
    free(idx)
    return 0


# A subtree's node and leaf rows should fit in L2 beside the tokens' rows.
cdef int64_t SUBTREE_BYTES = 384 * 1024


cdef int _subtree_levels(int D, int64_t H, int L) noexcept nogil:
    """Levels of the subtrees of the grouped schedule: the most whose rows fit SUBTREE_BYTES,
    leaving at least 32 subtrees (for the threads to share) where the tree is deep enough."""
    cdef int S = 1
    while S < D - 5 and ((1 << (S + 1)) - 1 + (1 << (S + 1)) * (2 * L + 1)) * H * sizeof(float) <= SUBTREE_BYTES:
        S += 1
    return S


cdef int _grouped(const float *x, float *out, int64_t n, int64_t H, int D, int L,
                  const float *node_w, const float *node_b, const float *w1, const float *b1,
                  const float *w2, const float *leaf_b, const float *out_b, int act, int threads) noexcept nogil:
    cdef int S = _subtree_levels(D, H, L)
    cdef int T = D - S  # levels descended before grouping
    cdef int64_t t, i, g, G = 1 << T
    cdef float *scratch
    cdef int32_t *group = <int32_t *> malloc(n * sizeof(int32_t))
    cdef long *order = <long *> malloc(n * sizeof(long))
    cdef int64_t *start = <int64_t *> calloc(G + 1, sizeof(int64_t))
    if group == NULL or order == NULL or start == NULL:
        free(group); free(order); free(start)
        return -1
    with parallel(num_threads=threads):
        for i in prange((n + 3) // 4, schedule="static"):
            fff_route4(x + 4 * i * H, min(4, n - 4 * i), H, T, node_w, node_b, <int *> group + 4 * i)
    for t in range(n):  # counting sort of the tokens by subtree: start[g] .. start[g+1] are g's
        start[group[t] + 1] += 1
    for g in range(G):
        start[g + 1] += start[g]
    for t in range(n):
        order[start[group[t]]] = t
        start[group[t]] += 1
    for g in range(G, 0, -1):  # the fill advanced each start to the next subtree's: shift back
        start[g] = start[g - 1]
    start[0] = 0
    with parallel(num_threads=threads):
        scratch = _scratch(H, L)
        for g in prange(G, schedule="dynamic", chunksize=1):
            fff_subtree(x, out, scratch, order + start[g], start[g + 1] - start[g], G - 1 + g, S, H, D, L,
                        node_w, node_b, w1, b1, w2, leaf_b, out_b, act)
        fff_store_fence()
        free(scratch)
    free(group); free(order); free(start)
    return 0

# Batches of at least this many tokens per leaf take the grouped schedule: timed side by side at
# depth 11, H=768 on 2 threads (ms, per token vs grouped; order alternated, caches evicted by a
# dense FFN before each, 21 rounds), 512 tokens: 0.57 vs 0.80, 1024: 1.30 vs 1.43, 1536: 2.14 vs
# 2.06, 2048: 3.06 vs 2.60.
GROUP_MIN_TOKENS_PER_LEAF = 0.75


cdef object F32 = torch.float32


cdef uintptr_t _data(t, str name) except? 0:
    """t's data pointer, once t is checked to be a contiguous float32 CPU tensor. (Each check is a
    Python attribute call; this runs for nine tensors per layer per forward, so it asks the cheap ones.)"""
    if t.dtype is not F32 or not t.is_cpu or not t.is_contiguous():
        raise ValueError(f"fff_forward: {name} must be a contiguous float32 CPU tensor")
    return t.data_ptr()


def fff_forward(x, node_weight, node_bias, w1, b1, w2, leaf_bias, out_bias, str activation, out=None, group=None):
    """y = FFF(x) for x [..., H] float32 contiguous (its rows are the tokens); all weights float32
    contiguous, on the CPU. `out`, if given, is a contiguous float32 tensor shaped like x to write
    into. `group` forces the leaf-grouped (True) or the per-token (False) schedule; None picks by
    batch size."""
    if x.dim() == 0:
        raise ValueError("fff_forward: x must be [..., H]")
    cdef int64_t H = x.size(-1)  # (a method: the module indexes tuples without wraparound)
    cdef int64_t n = x.numel() // H if H else 0
    cdef int D = (node_weight.shape[0] + 1).bit_length() - 1
    cdef int L = w1.shape[1]
    cdef int threads = max(1, min(torch.get_num_threads(), (n + 63) // 64))  # >= 64 tokens a thread
    cdef uintptr_t px = _data(x, "x"), pnw = _data(node_weight, "node_weight"), pnb = _data(node_bias, "node_bias")
    cdef uintptr_t pw1 = _data(w1, "w1"), pb1 = _data(b1, "b1"), pw2 = _data(w2, "w2")
    cdef uintptr_t plb = _data(leaf_bias, "leaf_bias"), pob = _data(out_bias, "out_bias")
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape:
        raise ValueError("fff_forward: out must be a contiguous float32 tensor shaped like x")
    cdef uintptr_t po = _data(out, "out")
    cdef int act = ACTIVATION_CODES[activation]
    cdef int status = 0
    cdef bint grouped = n >= GROUP_MIN_TOKENS_PER_LEAF * (1 << D) if group is None else group
    with nogil:
        if grouped:
            status = _grouped(<const float *> px, <float *> po, n, H, D, L, <const float *> pnw, <const float *> pnb,
                              <const float *> pw1, <const float *> pb1, <const float *> pw2, <const float *> plb,
                              <const float *> pob, act, threads)
        else:
            status = _per_token(<const float *> px, <float *> po, n, H, D, L, <const float *> pnw, <const float *> pnb,
                                <const float *> pw1, <const float *> pb1, <const float *> pw2, <const float *> plb,
                                <const float *> pob, act, threads)
    if status:
        raise MemoryError("fff_forward: no memory for the token order")
    return out
