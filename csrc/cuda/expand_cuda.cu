// CUDA kernels of expand (docs/design.md §2). Forward: the coefficient table gives ||u|| of every synthetic
// point (one warp each), then one thread per output element writes u / max(||u||, eps). Backward: one warp
// per synthetic point computes s = <a, grad>, then one thread per (pair, column) walks the pair's points
// and adds into both endpoint rows with atomicAdd (rows are shared between pairs).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "coef_table_cuda.cuh"

namespace ee {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

int grid_for(int64_t work) { return int(std::min<int64_t>((work + kThreads - 1) / kThreads, 1 << 20)); }

template <typename acc_t, typename scalar_t>
__global__ void ee_cuda_expand_kernel(const acc_t* __restrict__ X, int64_t B, int64_t D,
                                      const int64_t* __restrict__ pairs, const PointCoef<acc_t>* __restrict__ coef,
                                      int64_t P, int64_t n, bool normalize, scalar_t* __restrict__ out) {
  const int64_t total = P * n * D, T = n + 2;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = e % D, pt = e / D, p = pt / n, t = pt % n + 1;
    const int64_t i = pairs[2 * p], j = pairs[2 * p + 1];
    if (i < 0 || i >= B || j < 0 || j >= B) {
      out[e] = scalar_t(NAN);
      continue;
    }
    const acc_t u = interpolate(X[i * D + d], X[j * D + d], t, n);
    out[e] = scalar_t(u / normalize_denominator(coef[p * T + t].unorm, normalize));
  }
}

// s[p, t-1] = <u / ||u||, grad[p, t-1]>, one warp per synthetic point.
template <typename acc_t>
__global__ void ee_cuda_projection_kernel(const acc_t* __restrict__ X, int64_t B, int64_t D,
                                          const int64_t* __restrict__ pairs, const PointCoef<acc_t>* __restrict__ coef,
                                          const acc_t* __restrict__ grad, int64_t P, int64_t n, acc_t* __restrict__ s) {
  const int64_t T = n + 2, warps = int64_t(gridDim.x) * (blockDim.x / kWarp);
  const int lane = threadIdx.x % kWarp;
  for (int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; w < P * n; w += warps) {
    const int64_t p = w / n, t = w % n + 1;
    const acc_t* xi = X + safe_row(pairs[2 * p], B) * D;
    const acc_t* xj = X + safe_row(pairs[2 * p + 1], B) * D;
    const acc_t* g = grad + w * D;
    acc_t dot = 0;
    for (int64_t d = lane; d < D; d += kWarp)
      dot += interpolate(xi[d], xj[d], t, n) * g[d];
    dot = warp_sum(dot);
    const acc_t un = coef[p * T + t].unorm;
    if (lane == 0) s[w] = un > acc_t(0) ? dot / un : acc_t(0);
  }
}

template <typename acc_t>
__global__ void ee_cuda_expand_backward_kernel(const acc_t* __restrict__ X, int64_t B, int64_t D,
                                       const int64_t* __restrict__ pairs, const PointCoef<acc_t>* __restrict__ coef,
                                       const acc_t* __restrict__ grad, const acc_t* __restrict__ s, int64_t P,
                                       int64_t n, bool normalize, acc_t* __restrict__ dX) {
  const int64_t T = n + 2;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < P * D; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / D, d = e % D, i = pairs[2 * p], j = pairs[2 * p + 1];
    if (i < 0 || i >= B || j < 0 || j >= B) continue;
    acc_t gi = 0, gj = 0;
    for (int64_t t = 1; t <= n; ++t) {
      const int64_t pt = p * n + t - 1;
      const acc_t un = coef[p * T + t].unorm;
      const acc_t u = interpolate(X[i * D + d], X[j * D + d], t, n);
      const acc_t proj = normalize_projection(s[pt], un, normalize);
      const acc_t gu = (grad[pt * D + d] - u * proj) / normalize_denominator(un, normalize);
      gi += weight_i<acc_t>(t, n) * gu;
      gj += weight_j<acc_t>(t, n) * gu;
    }
    atomicAdd(dX + i * D + d, gi);
    atomicAdd(dX + j * D + d, gj);
  }
}

Tensor expand_cuda(const Tensor& X_, const Tensor& pairs_, int64_t n, bool normalize) {
  check_embeddings(X_);
  check_pairs(pairs_, X_);
  check_n_inner(n);
  const c10::cuda::CUDAGuard guard(X_.device());
  const Tensor pairs = pairs_.contiguous();
  const int64_t P = pairs.size(0), B = X_.size(0), D = X_.size(1);
  Tensor out = at::empty({P, n, D}, X_.options());
  if (out.numel() == 0) return out;
  const Tensor X = X_.to(acc_type_of(X_)).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X_.scalar_type(), "expand_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Tensor coef = coef_table_cuda<acc_t>(X, pairs, nullptr, n, normalize, nullptr);
    ee_cuda_expand_kernel<acc_t, scalar_t><<<grid_for(P * n * D), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        X.data_ptr<acc_t>(), B, D, pairs.data_ptr<int64_t>(),
        reinterpret_cast<const PointCoef<acc_t>*>(coef.data_ptr<acc_t>()), P, n, normalize, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

Tensor expand_backward_cuda(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_, int64_t n, bool normalize) {
  check_expand_backward_inputs(grad_, X_, pairs_, n);
  const int64_t P = pairs_.size(0), B = X_.size(0), D = X_.size(1);
  const c10::cuda::CUDAGuard guard(X_.device());
  if (grad_.numel() == 0) return at::zeros_like(X_);
  // The atomicAdd order into the endpoint rows varies from run to run: raise (or warn) under deterministic mode.
  at::globalContext().alertNotDeterministic("ee_cuda::expand_backward on CUDA");
  const at::ScalarType acc = acc_type_of(X_);
  const Tensor pairs = pairs_.contiguous();
  const Tensor X = X_.to(acc).contiguous(), grad = grad_.to(acc).contiguous();
  Tensor dX = at::zeros({B, D}, X.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "expand_backward_cuda", [&] {
    using acc_t = scalar_t;
    const Tensor coef = coef_table_cuda<acc_t>(X, pairs, nullptr, n, normalize, nullptr);
    const auto* c = reinterpret_cast<const PointCoef<acc_t>*>(coef.data_ptr<acc_t>());
    Tensor s = at::empty({P, n}, X.options());
    ee_cuda_projection_kernel<acc_t><<<grid_for(P * n * kWarp), kThreads, 0, stream>>>(
        X.data_ptr<acc_t>(), B, D, pairs.data_ptr<int64_t>(), c, grad.data_ptr<acc_t>(), P, n, s.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ee_cuda_expand_backward_kernel<acc_t><<<grid_for(P * D), kThreads, 0, stream>>>(
        X.data_ptr<acc_t>(), B, D, pairs.data_ptr<int64_t>(), c, grad.data_ptr<acc_t>(), s.data_ptr<acc_t>(), P, n,
        normalize, dX.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dX.to(X_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CUDA, m) {
  m.impl("expand", &expand_cuda);
  m.impl("expand_backward", &expand_backward_cuda);
}

}  // namespace ee
