// Hard forward of an FFF layer on the GPU (layout: fffconvert/layer.py).
//
// One warp per token; persistent blocks of WARPS warps stride over the tokens. Per block, the top
// `S` levels of the tree (the rows every token reads) are copied once into shared memory; deeper
// node rows and the leaf rows come from L2/HBM with 16-byte loads, coalesced across the warp, all
// of a row's loads issued before any is used. Each token's input row lives in registers as fp32;
// dot products accumulate in fp32 and are reduced with warp shuffles; the activation and both
// biases are fused into the output write.
// Any N (grid-stride loop, no out-of-bounds access), any H, any depth and leaf width.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include <map>
#include <mutex>
#include <tuple>

namespace {

constexpr int WARPS = 16;                 // warps per block
constexpr int TOP_BYTES = 48 * 1024;      // shared memory for the top of the tree

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Vec { T v[VEC]; };

__device__ __forceinline__ float activation(float x, int kind) {
  switch (kind) {
    case 0: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case 1: return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case 2: return x > 0.f ? x : 0.f;
    default: return x / (1.f + expf(-x));
  }
}

__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// One token's input row, spread over the warp: lane l holds chunks l, l + 32, ... (VEC each), fp32.
template <typename T, int VEC, int CPL>
struct RowSlice {
  float v[CPL][VEC];
};

// Load CPL chunks of a row at once (independent 16-byte loads in flight), zero past the end.
template <typename T, int VEC, int CPL>
__device__ __forceinline__ void load_row(Vec<T, VEC> (&w)[CPL], const T* row, int chunks, int lane) {
#pragma unroll
  for (int i = 0; i < CPL; i++) {
    const int c = lane + 32 * i;
    if (c < chunks) w[i] = reinterpret_cast<const Vec<T, VEC>*>(row)[c];
    else {
#pragma unroll
      for (int k = 0; k < VEC; k++) w[i].v[k] = from_f<T>(0.f);
    }
  }
}

// x . row for the whole warp (every lane gets the sum).
template <typename T, int VEC, int CPL>
__device__ __forceinline__ float warp_dot(const RowSlice<T, VEC, CPL>& x, const T* row, int chunks, int lane) {
  Vec<T, VEC> w[CPL];
  load_row<T, VEC, CPL>(w, row, chunks, lane);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < CPL; i++)
#pragma unroll
    for (int k = 0; k < VEC; k++) s += x.v[i][k] * to_f(w[i].v[k]);
  return warp_sum(s);
}

template <typename T, int VEC, int CPL>
__global__ void __launch_bounds__(WARPS * 32)
fff_forward_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t n, int H, int D, int L, int S,
                   const T* __restrict__ node_w, const T* __restrict__ node_b, const T* __restrict__ w1,
                   const T* __restrict__ b1, const T* __restrict__ w2, const T* __restrict__ leaf_b,
                   const T* __restrict__ out_b, int act) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int chunks = H / VEC, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int top_rows = (1 << S) - 1;
  T* top = reinterpret_cast<T*>(smem);
  const size_t top_bytes = ((size_t)top_rows * H * sizeof(T) + 15) / 16 * 16;
  float* hs = reinterpret_cast<float*>(smem + top_bytes) + (size_t)warp * L;  // this warp's leaf activations

  for (int i = threadIdx.x; i < top_rows * chunks; i += blockDim.x)
    reinterpret_cast<Vec<T, VEC>*>(top)[i] = reinterpret_cast<const Vec<T, VEC>*>(node_w)[i];
  __syncthreads();

  const int64_t first_leaf = (int64_t(1) << D) - 1;
  for (int64_t t = (int64_t)blockIdx.x * WARPS + warp; t < n; t += (int64_t)gridDim.x * WARPS) {
    RowSlice<T, VEC, CPL> xr;
    {
      Vec<T, VEC> v[CPL];
      load_row<T, VEC, CPL>(v, x + t * H, chunks, lane);
#pragma unroll
      for (int i = 0; i < CPL; i++)
#pragma unroll
        for (int k = 0; k < VEC; k++) xr.v[i][k] = to_f(v[i].v[k]);
    }

    int64_t node = 0;
    for (int d = 0; d < D; d++) {
      const T* row = d < S ? top + node * H : node_w + node * H;
      const float z = warp_dot<T, VEC, CPL>(xr, row, chunks, lane) + to_f(node_b[node]);
      node = 2 * node + (z > 0.f ? 2 : 1);
    }
    const int64_t k = node - first_leaf;

    for (int j = 0; j < L; j++) {
      const float z = warp_dot<T, VEC, CPL>(xr, w1 + (k * L + j) * H, chunks, lane) + to_f(b1[k * L + j]);
      if (lane == 0) hs[j] = activation(z, act);
    }
    __syncwarp();

    float acc[CPL][VEC];
    {
      Vec<T, VEC> a[CPL], b[CPL];
      load_row<T, VEC, CPL>(a, leaf_b + k * H, chunks, lane);
      load_row<T, VEC, CPL>(b, out_b, chunks, lane);
#pragma unroll
      for (int i = 0; i < CPL; i++)
#pragma unroll
        for (int e = 0; e < VEC; e++) acc[i][e] = to_f(a[i].v[e]) + to_f(b[i].v[e]);
    }
    for (int j = 0; j < L; j++) {
      Vec<T, VEC> w[CPL];
      load_row<T, VEC, CPL>(w, w2 + (k * L + j) * H, chunks, lane);
      const float h = hs[j];
#pragma unroll
      for (int i = 0; i < CPL; i++)
#pragma unroll
        for (int e = 0; e < VEC; e++) acc[i][e] += h * to_f(w[i].v[e]);
    }
    Vec<T, VEC>* yt = reinterpret_cast<Vec<T, VEC>*>(out + t * H);
#pragma unroll
    for (int i = 0; i < CPL; i++) {
      const int c = lane + 32 * i;
      if (c < chunks) {
        Vec<T, VEC> y;
#pragma unroll
        for (int e = 0; e < VEC; e++) y.v[e] = from_f<T>(acc[i][e]);
        yt[c] = y;
      }
    }
    __syncwarp();  // hs is rewritten by this warp's next token
  }
}

// Blocks of `kernel` that fit on one SM with `smem` bytes of dynamic shared memory. The CUDA
// queries cost tens of microseconds, more than the kernel at small batches: asked once per
// (kernel, device, size) and remembered.
template <typename K>
int resident_blocks(K kernel, int device, size_t smem) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, size_t>, int> cache;
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), device, smem);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(TOP_BYTES + 64 * 1024)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, WARPS * 32, smem));
  return cache[key] = std::max(per_sm, 1);
}

template <typename T, int VEC, int CPL>
void launch(const torch::Tensor& x, torch::Tensor& out, const torch::Tensor& nw, const torch::Tensor& nb,
            const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2, const torch::Tensor& lb,
            const torch::Tensor& ob, int D, int L, int act) {
  const int64_t n = x.size(0);
  const int H = x.size(1);
  const auto* props = at::cuda::getCurrentDeviceProperties();
  auto kernel = fff_forward_kernel<T, VEC, CPL>;
  int S = 0;
  while (S < D && ((int64_t(2) << S) - 1) * H * (int64_t)sizeof(T) <= TOP_BYTES) S++;
  auto smem_for = [&](int s) { return (((size_t)(1 << s) - 1) * H * sizeof(T) + 15) / 16 * 16 + (size_t)WARPS * L * sizeof(float); };
  const int per_sm = resident_blocks(kernel, x.get_device(), smem_for(S));
  const int64_t blocks = std::min<int64_t>((n + WARPS - 1) / WARPS, (int64_t)props->multiProcessorCount * std::max(per_sm, 1));
  // Keep no more levels in shared memory than the block's tokens repay (copying a level costs
  // about what a token pays to read it from L2).
  const int64_t tokens_per_block = (n + blocks - 1) / blocks;
  while (S > 0 && (int64_t(1) << S) > tokens_per_block) S--;
  const size_t smem = smem_for(S);
  kernel<<<blocks, WARPS * 32, smem, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<T*>(out.data_ptr()), n, H, D, L, S,
      reinterpret_cast<const T*>(nw.data_ptr()), reinterpret_cast<const T*>(nb.data_ptr()),
      reinterpret_cast<const T*>(w1.data_ptr()), reinterpret_cast<const T*>(b1.data_ptr()),
      reinterpret_cast<const T*>(w2.data_ptr()), reinterpret_cast<const T*>(lb.data_ptr()),
      reinterpret_cast<const T*>(ob.data_ptr()), act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Chunks per lane is a template parameter so that a row's loads are all issued before use and
// the input row lives in registers; pick the smallest instantiation that covers H.
template <typename T, int VEC>
void dispatch_cpl(const torch::Tensor& x, torch::Tensor& out, const torch::Tensor& nw, const torch::Tensor& nb,
                  const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                  const torch::Tensor& lb, const torch::Tensor& ob, int D, int L, int act) {
  const int cpl = (x.size(1) / VEC + 31) / 32;
#define FFF_CPL(N) if (cpl <= N) return launch<T, VEC, N>(x, out, nw, nb, w1, b1, w2, lb, ob, D, L, act);
  FFF_CPL(1) FFF_CPL(2) FFF_CPL(3) FFF_CPL(4) FFF_CPL(6) FFF_CPL(8) FFF_CPL(12) FFF_CPL(16) FFF_CPL(24) FFF_CPL(32)
#undef FFF_CPL
  TORCH_CHECK(false, "fff_forward: hidden size ", x.size(1), " is larger than the CUDA kernel supports (",
              32 * 32 * VEC, " for this dtype and alignment)");
}

template <typename T>
void dispatch_vec(const torch::Tensor& x, torch::Tensor& out, const torch::Tensor& nw, const torch::Tensor& nb,
                  const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                  const torch::Tensor& lb, const torch::Tensor& ob, int D, int L, int act) {
  constexpr int VEC = 16 / sizeof(T);
  const int H = x.size(1);
  bool aligned = H % VEC == 0;
  for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{&x, &out, &nw, &w1, &w2, &lb, &ob})
    aligned = aligned && reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0;
  if (aligned)
    dispatch_cpl<T, VEC>(x, out, nw, nb, w1, b1, w2, lb, ob, D, L, act);
  else  // odd widths or offsets: element-wise loads, same kernel
    dispatch_cpl<T, 1>(x, out, nw, nb, w1, b1, w2, lb, ob, D, L, act);
}

}  // namespace

void fff_forward_cuda(const torch::Tensor& x, torch::Tensor& out, const torch::Tensor& nw, const torch::Tensor& nb,
                      const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                      const torch::Tensor& lb, const torch::Tensor& ob, int act) {
  const at::cuda::CUDAGuard guard(x.device());
  if (x.size(0) == 0) return;
  const int D = 63 - __builtin_clzll((unsigned long long)nw.size(0) + 1);
  const int L = w1.size(1);
  if (x.scalar_type() == at::kFloat)
    dispatch_vec<float>(x, out, nw, nb, w1, b1, w2, lb, ob, D, L, act);
  else if (x.scalar_type() == at::kHalf)
    dispatch_vec<__half>(x, out, nw, nb, w1, b1, w2, lb, ob, D, L, act);
  else
    dispatch_vec<__nv_bfloat16>(x, out, nw, nb, w1, b1, w2, lb, ob, D, L, act);
}
