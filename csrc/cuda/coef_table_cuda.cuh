// The (P, T) table of point coefficients on the GPU, one warp per point (see cpu/point_coef_cpu.h).
// It also gathers each pair's label, with invalid rows guarded (no host-side read of the indices).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "../common/search_tiles.h"

namespace ee {

constexpr int kWarp = 32;
constexpr int kTableThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename acc_t>
__global__ void ee_cuda_coef_table_kernel(const acc_t* __restrict__ X, int64_t B, int64_t D,
                                          const int64_t* __restrict__ pairs, const int64_t* __restrict__ labels,
                                          int64_t P, int64_t n, bool normalize, PointCoef<acc_t>* __restrict__ out,
                                          int64_t* __restrict__ pair_label) {
  const int64_t T = n + 2;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarp);
  const int lane = threadIdx.x % kWarp;
  for (int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; w < P * T; w += warps) {
    const int64_t p = w / T, t = w % T, i = pairs[2 * p], j = pairs[2 * p + 1];
    const bool valid = i >= 0 && i < B && j >= 0 && j < B;
    const acc_t* xi = X + safe_row(i, B) * D;
    const acc_t* xj = X + safe_row(j, B) * D;
    acc_t s = 0;
    for (int64_t d = lane; d < D; d += kWarp) {
      const acc_t u = t == 0 ? xi[d] : (t == n + 1 ? xj[d] : interpolate(xi[d], xj[d], t, n));
      s += u * u;
    }
    s = warp_sum(s);
    if (lane == 0) {
      const bool original = t == 0 || t == n + 1;
      PointCoef<acc_t> c = point_coef<acc_t>(t, n, normalize, original ? acc_t(-1) : sqrt(s), s);
      if (!valid) c.alpha = c.beta = c.sqnorm = acc_t(NAN);
      out[w] = c;
      if (t == 0 && labels != nullptr) pair_label[p] = labels[safe_row(i, B)];
    }
  }
}

// X: (B, D) contiguous acc_t on the GPU. Returns the (P, T, 4) table; fills pair_label (P,) if labels given.
template <typename acc_t>
at::Tensor coef_table_cuda(const at::Tensor& X, const at::Tensor& pairs, const at::Tensor* labels, int64_t n,
                           bool normalize, at::Tensor* pair_label) {
  const int64_t P = pairs.size(0), T = n + 2;
  at::Tensor table = at::empty({P, T, 4}, X.options());
  if (P == 0) return table;
  const int64_t warps = P * T;
  const int blocks = int(std::min<int64_t>((warps * kWarp + kTableThreads - 1) / kTableThreads, 65535));
  ee_cuda_coef_table_kernel<acc_t><<<blocks, kTableThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      X.data_ptr<acc_t>(), X.size(0), X.size(1), pairs.data_ptr<int64_t>(),
      labels ? labels->data_ptr<int64_t>() : nullptr, P, n, normalize,
      reinterpret_cast<PointCoef<acc_t>*>(table.data_ptr<acc_t>()),
      pair_label ? pair_label->data_ptr<int64_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

}  // namespace ee
