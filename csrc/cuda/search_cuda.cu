// CUDA kernels of hard_negative_pairs / hard_negative_points (forward and backward), docs/design.md §3-§5.
//
// Forward: X X^T through cuBLAS (at::mm; TF32 only if torch.backends.cuda.matmul.allow_tf32 is set, off by
// default in PyTorch), the coefficient table (one kernel), then one launch over the whole grid whose blocks
// run the tiles of search_tiles.h: pair coefficients streamed through shared memory, (min, argmin) in
// registers. Three launches per call for float32 input.
// Backward: one thread per output adds its dG terms with atomicAdd (the order of float additions, and so
// the last bits of the gradient, may vary from run to run), then dX = (dG + dG^T) X through cuBLAS.
// With a reference set the same kernels run over the rectangular (p, q) grid and the cross-Gram X ref_X^T.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/reference_inputs.h"
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
  pair_tile(a, int64_t(blockIdx.x), bp, bq);
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
  for (int64_t q0 = 0; q0 < a.ref.count; q0 += kPointTileQ) {
    point_tile_load(a, shared, q0, threadIdx.x, blockDim.x);
    __syncthreads();
    point_tile_compute(a, shared, q0, o, best);
    __syncthreads();
  }
  point_write(a, o, best, dist, index);
}

// v added atomically at (row, col) of a row-major matrix with `ld` columns.
template <typename acc_t>
struct AtomicAdd {
  acc_t* out;
  int64_t ld;
  __device__ void operator()(int64_t row, int64_t col, acc_t v) const { atomicAdd(out + row * ld + col, v); }
};

// Against a reference set: cross entries into the (B, R) cross dG, own entries per pair into (count, 3) arrays,
// own[0] for the query pairs and own[1] for the reference's.
template <typename acc_t>
struct ReferenceEntries {
  AtomicAdd<acc_t> cross;
  acc_t* own[2];
  __device__ void operator()(int64_t row, int64_t col, acc_t v) const { cross(row, col, v); }
  __device__ void operator()(int side, int64_t pair, int w, acc_t v) const { atomicAdd(own[side] + 3 * pair + w, v); }
};

// One thread per output adds its entries (search_tiles.h); `entries` is WithinEntries or ReferenceEntries.
template <typename acc_t, typename Entries>
__global__ void ee_cuda_scatter_kernel(SearchArgs<acc_t> a, bool normalize, bool points, const acc_t* __restrict__ dist,
                                       const acc_t* __restrict__ grad, const int64_t* __restrict__ index,
                                       Entries entries) {
  const int64_t cols = points ? a.T : a.ref.count, outputs = a.query.count * cols;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < outputs; o += int64_t(gridDim.x) * blockDim.x) {
    if (points)
      point_output_entries(a, normalize, o, dist[o], grad[o], index, entries, entries);
    else
      pair_output_entries(a, normalize, o / cols, o % cols, dist[o], grad[o], index, entries, entries);
  }
}

// dY += S Y for the own entries own (count, 3) of `set`'s pairs (own_rows()), one thread per (pair, column).
template <typename acc_t>
__global__ void ee_cuda_own_entries_kernel(PairSet<acc_t> set, const acc_t* __restrict__ Y, int64_t D,
                                           const acc_t* __restrict__ own, acc_t* __restrict__ dY) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < set.count * D;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = e / D, d = e - q * D;
    const int64_t k = safe_row(set.pairs[2 * q], set.rows), l = safe_row(set.pairs[2 * q + 1], set.rows);
    acc_t to_k[2], to_l[2];
    own_rows(own + 3 * q, to_k, to_l);
    const acc_t yk = Y[k * D + d], yl = Y[l * D + d];
    atomicAdd(dY + k * D + d, to_k[0] * yk + to_k[1] * yl);
    atomicAdd(dY + l * D + d, to_l[0] * yk + to_l[1] * yl);
  }
}

int grid_for(int64_t work) { return int(std::min<int64_t>((work + kScatterThreads - 1) / kScatterThreads, 1 << 20)); }

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

// One side of the search on the GPU: its (P, T) coefficient table and (given labels) its pairs' labels.
// X: (rows, D) contiguous acc_t; pairs: (P, 2) contiguous int64.
template <typename acc_t>
struct DeviceSet {
  Tensor coef, pair_label;
  PairSet<acc_t> view;

  DeviceSet(const Tensor& X, const Tensor& pairs, const Tensor* labels, int64_t n, bool normalize) {
    if (labels) pair_label = at::empty({pairs.size(0)}, pairs.options());
    coef = coef_table_cuda<acc_t>(X, pairs, labels, n, normalize, labels ? &pair_label : nullptr);
    view = PairSet<acc_t>{reinterpret_cast<const PointCoef<acc_t>*>(coef.data_ptr<acc_t>()), pairs.data_ptr<int64_t>(),
                          labels ? pair_label.data_ptr<int64_t>() : nullptr, pairs.size(0), X.size(0)};
  }
};

// The search's one launch over its grid.
template <typename acc_t>
void launch_search(const SearchArgs<acc_t>& args, bool points, acc_t* dist, int64_t* index) {
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t T = args.T;
  if (points) {
    const size_t bytes = point_tile_bytes<acc_t>(T);
    reserve_shared(ee_cuda_points_kernel<acc_t>, bytes, T);
    const int64_t blocks = (args.query.count * T + kPointBlock - 1) / kPointBlock;
    EE_CHECK_VALUE(blocks <= INT32_MAX, "hard_negative_points: P * (n_inner + 2) = ", args.query.count * T,
                   " is too large");
    ee_cuda_points_kernel<acc_t><<<unsigned(blocks), kPointBlock, bytes, stream>>>(args, dist, index);
  } else {
    const size_t bytes = pair_tile_bytes<acc_t>(T);
    reserve_shared(ee_cuda_pairs_kernel<acc_t>, bytes, T);
    const int64_t blocks = pair_tiles(args);
    EE_CHECK_VALUE(blocks <= INT32_MAX, "hard_negative_pairs: ", args.query.count, " x ", args.ref.count,
                   " pairs is too large for one grid");
    ee_cuda_pairs_kernel<acc_t><<<unsigned(blocks), kPairTile * kPairTile, bytes, stream>>>(args, dist, index);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  Tensor dist = at::empty({P, kPoints ? T : P}, X_.options().dtype(acc_type_of(X_)));
  Tensor index = at::empty({P, kPoints ? T : P, 2}, pairs.options());
  if (P == 0) return {dist, index};
  const Tensor X = X_.to(acc_type_of(X_)).contiguous();
  const Tensor gram = at::mm(X, X.t());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_search_cuda", [&] {
    using acc_t = scalar_t;
    const DeviceSet<acc_t> set(X, pairs, &labels, n, normalize);
    launch_search(SearchArgs<acc_t>{gram.data_ptr<acc_t>(), set.view, set.view, T, true}, kPoints,
                  dist.data_ptr<acc_t>(), index.data_ptr<int64_t>());
  });
  return {dist, index};
}

template <bool kPoints>
std::tuple<Tensor, Tensor> search_reference_cuda(const Tensor& X_, const Tensor& pairs_, const Tensor& labels_,
                                                 const Tensor& ref_X_, const Tensor& ref_pairs_,
                                                 const Tensor& ref_labels_, int64_t n, bool normalize) {
  const c10::cuda::CUDAGuard guard(X_.device());
  const ReferenceForward in =
      reference_forward_inputs(X_, pairs_, labels_, ref_X_, ref_pairs_, ref_labels_, n, kPoints);
  if (in.empty) return {in.dist, in.index};
  AT_DISPATCH_FLOATING_TYPES(in.X.scalar_type(), "hard_negative_search_reference_cuda", [&] {
    using acc_t = scalar_t;
    const DeviceSet<acc_t> query(in.X, in.pairs, &in.labels, n, normalize);
    const DeviceSet<acc_t> ref(in.Y, in.ref_pairs, &in.ref_labels, n, normalize);
    launch_search(SearchArgs<acc_t>{in.gram.data_ptr<acc_t>(), query.view, ref.view, n + 2, false}, kPoints,
                  in.dist.data_ptr<acc_t>(), in.index.data_ptr<int64_t>());
  });
  return {in.dist, in.index};
}

template <bool kPoints>
Tensor search_backward_cuda(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_, const Tensor& dist_,
                            const Tensor& index_, int64_t n, bool normalize) {
  const int64_t P = pairs_.size(0), B = X_.size(0), T = n + 2;
  check_search_backward_inputs(grad_, X_, pairs_, dist_, index_, n,
                               kPoints ? at::IntArrayRef{P, T} : at::IntArrayRef{P, P});
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
    const DeviceSet<acc_t> set(X, pairs, nullptr, n, normalize);
    const WithinEntries<acc_t, AtomicAdd<acc_t>> entries{set.view, AtomicAdd<acc_t>{dG.data_ptr<acc_t>(), B}};
    ee_cuda_scatter_kernel<<<grid_for(P * (kPoints ? T : P)), kScatterThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        SearchArgs<acc_t>{nullptr, set.view, set.view, T, true}, normalize, kPoints, dist.data_ptr<acc_t>(),
        grad.data_ptr<acc_t>(), index.data_ptr<int64_t>(), entries);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return at::mm(dG + dG.t(), X).to(X_.scalar_type());
}

// Against a reference set: the entries into the cross dG (B x R) and the pairs' own entries, then
// dX = dG ref_X and dref_X = dG^T X (the cross-Gram's own backward) plus the own entries in D-space.
template <bool kPoints>
std::tuple<Tensor, Tensor> search_reference_backward_cuda(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_,
                                                          const Tensor& ref_X_, const Tensor& ref_pairs_,
                                                          const Tensor& dist_, const Tensor& index_, int64_t n,
                                                          bool normalize, bool ref_grad) {
  const c10::cuda::CUDAGuard guard(X_.device());
  const ReferenceBackward in =
      reference_backward_inputs(grad_, X_, pairs_, ref_X_, ref_pairs_, dist_, index_, n, kPoints);
  Tensor dX, dY;
  if (in.empty) return reference_gradients(X_, ref_X_, dX, dY, ref_grad);
  at::globalContext().alertNotDeterministic(kPoints ? "ee_cuda::hard_negative_points_ref_backward on CUDA"
                                                    : "ee_cuda::hard_negative_pairs_ref_backward on CUDA");
  const Tensor &X = in.X, &Y = in.Y, &pairs = in.pairs, &ref_pairs = in.ref_pairs;
  const Tensor &grad = in.grad, &dist = in.dist, &index = in.index;
  const int64_t P = pairs.size(0), Q = ref_pairs.size(0), T = n + 2, B = X.size(0), R = Y.size(0);
  Tensor dG = at::zeros({B, R}, X.options());
  Tensor own = at::zeros({P, 3}, X.options()), ref_own = at::zeros({Q, 3}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_search_reference_backward_cuda", [&] {
    using acc_t = scalar_t;
    auto stream = at::cuda::getCurrentCUDAStream();
    const DeviceSet<acc_t> query(X, pairs, nullptr, n, normalize), ref(Y, ref_pairs, nullptr, n, normalize);
    const ReferenceEntries<acc_t> entries{AtomicAdd<acc_t>{dG.data_ptr<acc_t>(), R},
                                          {own.data_ptr<acc_t>(), ref_own.data_ptr<acc_t>()}};
    ee_cuda_scatter_kernel<<<grid_for(P * (kPoints ? T : Q)), kScatterThreads, 0, stream>>>(
        SearchArgs<acc_t>{nullptr, query.view, ref.view, T, false}, normalize, kPoints, dist.data_ptr<acc_t>(),
        grad.data_ptr<acc_t>(), index.data_ptr<int64_t>(), entries);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dX = at::mm(dG, Y);
    const int64_t D = X.size(1);
    ee_cuda_own_entries_kernel<<<grid_for(P * D), kScatterThreads, 0, stream>>>(
        query.view, X.data_ptr<acc_t>(), D, own.data_ptr<acc_t>(), dX.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!ref_grad) return;
    dY = at::mm(dG.t(), X);
    ee_cuda_own_entries_kernel<<<grid_for(Q * D), kScatterThreads, 0, stream>>>(
        ref.view, Y.data_ptr<acc_t>(), D, ref_own.data_ptr<acc_t>(), dY.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return reference_gradients(X_, ref_X_, dX, dY, ref_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CUDA, m) {
  m.impl("hard_negative_pairs", &search_cuda<false>);
  m.impl("hard_negative_points", &search_cuda<true>);
  m.impl("hard_negative_pairs_backward", &search_backward_cuda<false>);
  m.impl("hard_negative_points_backward", &search_backward_cuda<true>);
  m.impl("hard_negative_pairs_ref", &search_reference_cuda<false>);
  m.impl("hard_negative_points_ref", &search_reference_cuda<true>);
  m.impl("hard_negative_pairs_ref_backward", &search_reference_backward_cuda<false>);
  m.impl("hard_negative_points_ref_backward", &search_reference_backward_cuda<true>);
}

}  // namespace ee
