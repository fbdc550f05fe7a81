// CUDA kernels of hard_negative_pairs / hard_negative_points (forward and backward), docs/design.md §3-§5.
//
// Forward: X X^T through cuBLAS (at::mm; TF32 only if torch.backends.cuda.matmul.allow_tf32 is set, off by
// default in PyTorch), the coefficient table (one kernel), then one launch over the whole grid whose blocks
// run the tiles of search_tiles.h: pair coefficients streamed through shared memory, (min, argmin) in
// registers. Three launches per call for float32 input.
// Backward: one thread per output adds its dG terms with atomicAdd (the order of float additions, and so
// the last bits of the gradient, may vary from run to run), then dX = (dG + dG^T) X through cuBLAS.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/search_tiles.h"
#include "coef_table_cuda.cuh"

namespace ee {
namespace {

using at::Tensor;

constexpr int kScatterThreads = 256;

template <typename acc_t>
__global__ void __launch_bounds__(kPairTile * kPairTile)
    ee_cuda_pairs_kernel(SearchArgs<acc_t> a, acc_t* __restrict__ dist, int64_t* __restrict__ index) {
  extern __shared__ __align__(16) unsigned char shared[];
  int64_t bp, bq;
  triangle_tile(int64_t(blockIdx.x), bp, bq);
  pair_tile_load(a, shared, bp, bq, threadIdx.x, blockDim.x);
  __syncthreads();
  pair_tile_compute(a, shared, bp, bq, threadIdx.x / kPairTile, threadIdx.x % kPairTile, dist, index);
}

template <typename acc_t>
__global__ void __launch_bounds__(kPointBlock)
    ee_cuda_points_kernel(SearchArgs<acc_t> a, acc_t* __restrict__ dist, int64_t* __restrict__ index) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t o = int64_t(blockIdx.x) * kPointBlock + threadIdx.x;
  Best<acc_t> best = no_best<acc_t>();
  for (int64_t q0 = 0; q0 < a.P; q0 += kPointTileQ) {
    point_tile_load(a, shared, q0, threadIdx.x, blockDim.x);
    __syncthreads();
    point_tile_compute(a, shared, q0, o, best);
    __syncthreads();
  }
  point_write(a, o, best, dist, index);
}

template <typename acc_t>
__global__ void ee_cuda_scatter_kernel(const PointCoef<acc_t>* __restrict__ coef, const int64_t* __restrict__ pairs,
                                       int64_t B, int64_t P, int64_t T, bool normalize, bool points,
                                       const acc_t* __restrict__ dist, const acc_t* __restrict__ grad,
                                       const int64_t* __restrict__ index, acc_t* __restrict__ dG) {
  auto add = [dG, B](int64_t r, int64_t c, acc_t v) { atomicAdd(dG + r * B + c, v); };
  const int64_t outputs = points ? P * T : P * P;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < outputs; o += int64_t(gridDim.x) * blockDim.x) {
    if (points)
      point_output_terms(coef, pairs, B, P, T, normalize, o, dist[o], grad[o], index, add);
    else
      pair_output_terms(coef, pairs, B, P, T, normalize, o / P, o % P, dist[o], grad[o], index, add);
  }
}

// Dynamic shared memory of `bytes` for `kernel`, opting in above the 48 KiB default where the device allows.
template <typename Kernel>
void reserve_shared(Kernel kernel, size_t bytes, int64_t T) {
  int device, optin;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  EE_CHECK_VALUE(bytes <= size_t(optin), "n_inner = ", T - 2, " needs ", bytes,
                 " bytes of shared memory per block, more than this GPU's ", optin);
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <bool kPoints>
std::tuple<Tensor, Tensor> search_cuda(const Tensor& X_, const Tensor& pairs_, const Tensor& labels_, int64_t n,
                                       bool normalize) {
  check_search_inputs(X_, pairs_, labels_, n);
  const c10::cuda::CUDAGuard guard(X_.device());
  const Tensor pairs = pairs_.contiguous(), labels = labels_.contiguous();
  const int64_t P = pairs.size(0), T = n + 2;
  // dist in the accumulation type (float for half inputs): the backward reads it, and the public op rounds it
  // to X's dtype.
  Tensor dist = at::empty(kPoints ? at::IntArrayRef{P, T} : at::IntArrayRef{P, P}, X_.options().dtype(acc_type_of(X_)));
  Tensor index = at::empty(kPoints ? at::IntArrayRef{P, T, 2} : at::IntArrayRef{P, P, 2}, pairs.options());
  if (P == 0) return {dist, index};
  const Tensor X = X_.to(acc_type_of(X_)).contiguous();
  const Tensor gram = at::mm(X, X.t());
  Tensor plabel = at::empty({P}, pairs.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_search_cuda", [&] {
    using acc_t = scalar_t;
    const Tensor coef = coef_table_cuda<acc_t>(X, pairs, &labels, n, normalize, &plabel);
    const SearchArgs<acc_t> args{gram.data_ptr<acc_t>(), gram.size(0),
                                 reinterpret_cast<const PointCoef<acc_t>*>(coef.data_ptr<acc_t>()),
                                 pairs.data_ptr<int64_t>(), plabel.data_ptr<int64_t>(), P, T};
    if (kPoints) {
      const size_t bytes = point_tile_bytes<acc_t>(T);
      reserve_shared(ee_cuda_points_kernel<acc_t>, bytes, T);
      const int64_t blocks = (P * T + kPointBlock - 1) / kPointBlock;
      EE_CHECK_VALUE(blocks <= INT32_MAX, "hard_negative_points: P * (n_inner + 2) = ", P * T, " is too large");
      ee_cuda_points_kernel<acc_t><<<unsigned(blocks), kPointBlock, bytes, stream>>>(
          args, dist.data_ptr<acc_t>(), index.data_ptr<int64_t>());
    } else {
      const size_t bytes = pair_tile_bytes<acc_t>(T);
      reserve_shared(ee_cuda_pairs_kernel<acc_t>, bytes, T);
      const int64_t blocks = triangle_tiles(P);
      EE_CHECK_VALUE(blocks <= INT32_MAX, "hard_negative_pairs: P = ", P, " pairs is too large for one grid");
      ee_cuda_pairs_kernel<acc_t><<<unsigned(blocks), kPairTile * kPairTile, bytes, stream>>>(
          args, dist.data_ptr<acc_t>(), index.data_ptr<int64_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dist, index};
}

template <bool kPoints>
Tensor search_backward_cuda(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_, const Tensor& dist_,
                            const Tensor& index_, int64_t n, bool normalize) {
  const int64_t P = pairs_.size(0), B = X_.size(0), T = n + 2;
  check_search_backward_inputs(grad_, X_, pairs_, dist_, index_, n, kPoints ? at::IntArrayRef{P, T} : at::IntArrayRef{P, P});
  const c10::cuda::CUDAGuard guard(X_.device());
  if (P == 0 || X_.numel() == 0) return at::zeros_like(X_);
  // The atomicAdd order into dG varies from run to run: raise (or warn) under deterministic mode.
  at::globalContext().alertNotDeterministic(kPoints ? "ee_cuda::hard_negative_points_backward on CUDA"
                                                    : "ee_cuda::hard_negative_pairs_backward on CUDA");
  const at::ScalarType acc = acc_type_of(X_);
  const Tensor pairs = pairs_.contiguous(), index = index_.contiguous();
  const Tensor X = X_.to(acc).contiguous();
  const Tensor grad = grad_.to(acc).contiguous(), dist = dist_.to(acc).contiguous();
  Tensor dG = at::zeros({B, B}, X.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "hard_negative_search_backward_cuda", [&] {
    using acc_t = scalar_t;
    const Tensor coef = coef_table_cuda<acc_t>(X, pairs, nullptr, n, normalize, nullptr);
    const int64_t outputs = kPoints ? P * T : P * P;
    const int blocks = int(std::min<int64_t>((outputs + kScatterThreads - 1) / kScatterThreads, 1 << 20));
    ee_cuda_scatter_kernel<acc_t><<<blocks, kScatterThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const PointCoef<acc_t>*>(coef.data_ptr<acc_t>()), pairs.data_ptr<int64_t>(), B, P, T,
        normalize, kPoints, dist.data_ptr<acc_t>(), grad.data_ptr<acc_t>(), index.data_ptr<int64_t>(),
        dG.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return at::mm(dG + dG.t(), X).to(X_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CUDA, m) {
  m.impl("hard_negative_pairs", &search_cuda<false>);
  m.impl("hard_negative_points", &search_cuda<true>);
  m.impl("hard_negative_pairs_backward", &search_backward_cuda<false>);
  m.impl("hard_negative_points_backward", &search_backward_cuda<true>);
}

}  // namespace ee
