// CPU kernels of hard_negative_pairs / hard_negative_points (forward and backward), EE-SPEC §3-§4.
//
// Forward: one X X^T (BLAS), a (P, T) table of point coefficients, then the tiles of search_tiles.h driven
// over the (p, q) grid with at::parallel_for (each tile emulates one CUDA block).
// Backward, by cost (spec §4): hard_negative_pairs has P x P outputs, so their gradients are gathered into
// dG (each row owned by one task, no races) and finished with dX = (dG + dG^T) X, one B x B x D product;
// hard_negative_points has P x T outputs, so each output's terms go straight to the (at most four) rows
// they touch in D-space, in column chunks owned by one task each.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"
#include "../common/search_tiles.h"
#include "coef_table_cpu.h"
#include "search_rows_cpu.h"

namespace ee {
namespace {

using at::Tensor;

Tensor pair_labels(const Tensor& labels, const Tensor& pairs) {
  return labels.index_select(0, pairs.select(1, 0)).contiguous();
}

template <typename acc_t>
SearchArgs<acc_t> search_args(const Tensor& gram, const Tensor& coef, const Tensor& pairs, const Tensor& plabel,
                              int64_t T) {
  return SearchArgs<acc_t>{gram.data_ptr<acc_t>(), gram.size(0), coef_ptr<acc_t>(coef), pairs.data_ptr<int64_t>(),
                           plabel.data_ptr<int64_t>(), pairs.size(0), T};
}

template <typename acc_t, typename scalar_t>
void run_pair_tiles(const SearchArgs<acc_t>& args, scalar_t* dist, int64_t* index) {
  at::parallel_for(0, triangle_tiles(args.P), 1, [&](int64_t begin, int64_t end) {
    std::vector<SharedWord> shared((pair_tile_bytes<acc_t>(args.T) + 15) / 16);  // the block's shared memory
    for (int64_t tile = begin; tile < end; ++tile) {
      int64_t bp, bq;
      triangle_tile(tile, bp, bq);
      pair_tile_load(args, shared.data(), bp, bq, 0, 1);
      for (int tp = 0; tp < kPairTile; ++tp)
        for (int tq = 0; tq < kPairTile; ++tq) pair_tile_compute(args, shared.data(), bp, bq, tp, tq, dist, index);
    }
  });
}

template <typename acc_t, typename scalar_t>
void run_point_tiles(const SearchArgs<acc_t>& args, scalar_t* dist, int64_t* index) {
  const int64_t blocks = (args.P * args.T + kPointBlock - 1) / kPointBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<SharedWord> shared((point_tile_bytes<acc_t>(args.T) + 15) / 16);
    std::vector<Best<acc_t>> best(kPointBlock);  // the block's registers
    for (int64_t block = begin; block < end; ++block) {
      const int64_t o0 = block * kPointBlock;
      for (auto& b : best) b = no_best<acc_t>();
      for (int64_t q0 = 0; q0 < args.P; q0 += kPointTileQ) {
        point_tile_load(args, shared.data(), q0, 0, 1);
        for (int th = 0; th < kPointBlock; ++th) point_tile_compute(args, shared.data(), q0, o0 + th, best[th]);
      }
      for (int th = 0; th < kPointBlock; ++th) point_write(args, o0 + th, best[th], dist, index);
    }
  });
}

// The search on the CPU. By default finite inputs take the vectorizable row path (search_rows_cpu.h) and
// inputs with NaN the tile path; `emulate_gpu` forces the tile path, which drives the CUDA kernels' tile
// functions block by block (the tests use it to check the GPU's tiling on the CPU).
std::tuple<Tensor, Tensor> search_cpu_impl(const Tensor& X_, const Tensor& pairs_, const Tensor& labels, int64_t n,
                                           bool normalize, bool points, bool emulate_gpu) {
  check_search_inputs(X_, pairs_, labels, n);
  const Tensor pairs = pairs_.contiguous();
  check_pair_values_on_cpu(pairs, X_.size(0));
  const int64_t P = pairs.size(0), T = n + 2, cols = points ? T : P;
  Tensor dist = at::empty({P, cols}, X_.options());
  Tensor index = at::empty({P, cols, 2}, pairs.options());
  if (P == 0) return {dist, index};
  const Tensor X = X_.to(acc_type_of(X_)).contiguous();
  const Tensor gram = at::mm(X, X.t()).contiguous();
  const Tensor plabel = pair_labels(labels, pairs);
  const bool tiles = emulate_gpu || !at::isfinite(X).all().item<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X_.scalar_type(), "hard_negative_search_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Tensor coef = coef_table_cpu<acc_t>(X, pairs, n, normalize);
    const SearchArgs<acc_t> args = search_args<acc_t>(gram, coef, pairs, plabel, T);
    scalar_t* d = dist.data_ptr<scalar_t>();
    int64_t* idx = index.data_ptr<int64_t>();
    if (points)
      tiles ? run_point_tiles(args, d, idx) : point_rows_cpu(args, d, idx);
    else
      tiles ? run_pair_tiles(args, d, idx) : pair_rows_cpu(args, d, idx);
  });
  return {dist, index};
}

template <bool kPoints>
std::tuple<Tensor, Tensor> search_cpu(const Tensor& X, const Tensor& pairs, const Tensor& labels, int64_t n,
                                      bool normalize) {
  return search_cpu_impl(X, pairs, labels, n, normalize, kPoints, false);
}

std::tuple<Tensor, Tensor> search_tiles_emulated_cpu(const Tensor& X, const Tensor& pairs, const Tensor& labels,
                                                     int64_t n, bool normalize, bool points) {
  return search_cpu_impl(X, pairs, labels, n, normalize, points, true);
}

// What every search backward reads, checked and converted to the accumulation type.
struct BackwardInputs {
  Tensor X, pairs, grad, dist, index;
};

BackwardInputs backward_inputs(const Tensor& grad, const Tensor& X, const Tensor& pairs, const Tensor& dist,
                               const Tensor& index, int64_t n, bool points) {
  const int64_t P = pairs.size(0);
  check_search_backward_inputs(grad, X, pairs, dist, index, n, {P, points ? n + 2 : P});
  BackwardInputs in;
  in.pairs = pairs.contiguous();
  check_pair_values_on_cpu(in.pairs, X.size(0));
  const at::ScalarType acc = acc_type_of(X);
  in.X = X.to(acc).contiguous();
  in.grad = grad.to(acc).contiguous();
  in.dist = dist.to(acc).contiguous();
  in.index = index.contiguous();
  return in;
}

// The raw arrays of BackwardInputs, with the point coefficients rebuilt for them.
template <typename acc_t>
struct BackwardArrays {
  Tensor coef_table;
  const PointCoef<acc_t>* coef;
  const int64_t *pairs, *index;
  const acc_t *grad, *dist, *x;

  BackwardArrays(const BackwardInputs& in, int64_t n, bool normalize)
      : coef_table(coef_table_cpu<acc_t>(in.X, in.pairs, n, normalize)),
        coef(coef_ptr<acc_t>(coef_table)),
        pairs(in.pairs.data_ptr<int64_t>()),
        index(in.index.data_ptr<int64_t>()),
        grad(in.grad.data_ptr<acc_t>()),
        dist(in.dist.data_ptr<acc_t>()),
        x(in.X.data_ptr<acc_t>()) {}
};

// Node lists: for each row a of X, the pairs that have a as an endpoint (CSR).
struct NodePairs {
  std::vector<int64_t> offsets, pair;
};

NodePairs node_pairs(const int64_t* pairs, int64_t P, int64_t B) {
  NodePairs np;
  np.offsets.assign(B + 1, 0);
  for (int64_t e = 0; e < 2 * P; ++e) ++np.offsets[pairs[e] + 1];
  for (int64_t a = 0; a < B; ++a) np.offsets[a + 1] += np.offsets[a];
  np.pair.resize(2 * P);
  std::vector<int64_t> fill(np.offsets.begin(), np.offsets.end() - 1);
  for (int64_t e = 0; e < 2 * P; ++e) np.pair[fill[pairs[e]]++] = e / 2;
  return np;
}

Tensor hard_negative_pairs_backward_cpu(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_,
                                        const Tensor& dist_, const Tensor& index_, int64_t n, bool normalize) {
  const int64_t P = pairs_.size(0), B = X_.size(0), T = n + 2;
  const BackwardInputs in = backward_inputs(grad_, X_, pairs_, dist_, index_, n, false);
  const Tensor& X = in.X;
  if (P == 0 || X_.numel() == 0) return at::zeros_like(X_);
  Tensor dG = at::zeros({B, B}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_pairs_backward_cpu", [&] {
    using acc_t = scalar_t;
    const BackwardArrays<acc_t> arr(in, n, normalize);
    const PointCoef<acc_t>* c = arr.coef;
    const int64_t *pr = arr.pairs, *idx = arr.index;
    const acc_t *g = arr.grad, *d = arr.dist;
    acc_t* out = dG.data_ptr<acc_t>();
    const NodePairs np = node_pairs(pr, P, B);
    // Row a of dG gathers the terms whose row is a: those of outputs (p, q) and (q, p) for the pairs p
    // holding a. Every term of every output has its row in exactly one of its two pairs, so each is
    // added once, by the one task that owns its row.
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t a = begin; a < end; ++a) {
        acc_t* row = out + a * B;
        auto keep = [&](int64_t r, int64_t col, acc_t v) {
          if (r == a) row[col] += v;
        };
        for (int64_t e = np.offsets[a]; e < np.offsets[a + 1]; ++e) {
          const int64_t p = np.pair[e];
          for (int64_t q = 0; q < P; ++q) {
            const int64_t pq = p * P + q, qp = q * P + p;
            pair_output_terms(c, pr, B, P, T, normalize, p, q, d[pq], g[pq], idx, keep);
            pair_output_terms(c, pr, B, P, T, normalize, q, p, d[qp], g[qp], idx, keep);
          }
        }
      }
    });
  });
  return at::mm(dG + dG.t(), X).to(X_.scalar_type());
}

Tensor hard_negative_points_backward_cpu(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_,
                                         const Tensor& dist_, const Tensor& index_, int64_t n, bool normalize) {
  const int64_t P = pairs_.size(0), B = X_.size(0), D = X_.size(1), T = n + 2;
  const BackwardInputs in = backward_inputs(grad_, X_, pairs_, dist_, index_, n, true);
  const Tensor& X = in.X;
  if (P == 0 || X_.numel() == 0) return at::zeros_like(X_);
  Tensor dX = at::zeros({B, D}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_points_backward_cpu", [&] {
    using acc_t = scalar_t;
    const BackwardArrays<acc_t> arr(in, n, normalize);
    const PointCoef<acc_t>* c = arr.coef;
    const int64_t *pr = arr.pairs, *idx = arr.index;
    const acc_t *g = arr.grad, *d = arr.dist;
    const acc_t* x = arr.x;
    acc_t* out = dX.data_ptr<acc_t>();
    constexpr int64_t kChunk = 64;
    // dG entry (r, c, v) adds v x_c to row r and v x_r to row c, in this task's columns [d0, d1).
    at::parallel_for(0, (D + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
      const int64_t d0 = begin * kChunk, d1 = std::min(D, end * kChunk);
      auto apply = [&](int64_t r, int64_t col, acc_t v) {
        acc_t* yr = out + r * D;
        acc_t* yc = out + col * D;
        const acc_t* xr = x + r * D;
        const acc_t* xc = x + col * D;
        for (int64_t k = d0; k < d1; ++k) yr[k] += v * xc[k];
        for (int64_t k = d0; k < d1; ++k) yc[k] += v * xr[k];
      };
      for (int64_t o = 0; o < P * T; ++o) point_output_terms(c, pr, B, P, T, normalize, o, d[o], g[o], idx, apply);
    });
  });
  return dX.to(X_.scalar_type());
}

// The CUDA backward's scatter, run serially on the CPU for the tests: every output adds all of its dG
// terms (as the GPU's atomics do), then dX = (dG + dG^T) X.
Tensor scatter_backward_emulated_cpu(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_, const Tensor& dist_,
                                     const Tensor& index_, int64_t n, bool normalize, bool points) {
  const int64_t P = pairs_.size(0), B = X_.size(0), T = n + 2;
  const BackwardInputs in = backward_inputs(grad_, X_, pairs_, dist_, index_, n, points);
  const Tensor& X = in.X;
  if (P == 0 || X_.numel() == 0) return at::zeros_like(X_);
  Tensor dG = at::zeros({B, B}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "scatter_backward_emulated_cpu", [&] {
    using acc_t = scalar_t;
    const BackwardArrays<acc_t> arr(in, n, normalize);
    const PointCoef<acc_t>* c = arr.coef;
    const int64_t *pr = arr.pairs, *idx = arr.index;
    const acc_t *g = arr.grad, *d = arr.dist;
    acc_t* out = dG.data_ptr<acc_t>();
    auto add = [&](int64_t r, int64_t col, acc_t v) { out[r * B + col] += v; };
    if (points) {
      for (int64_t o = 0; o < P * T; ++o) point_output_terms(c, pr, B, P, T, normalize, o, d[o], g[o], idx, add);
    } else {
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < P; ++q) pair_output_terms(c, pr, B, P, T, normalize, p, q, d[p * P + q], g[p * P + q], idx, add);
    }
  });
  return at::mm(dG + dG.t(), X).to(X_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CPU, m) {
  m.impl("hard_negative_pairs", &search_cpu<false>);
  m.impl("hard_negative_points", &search_cpu<true>);
  m.impl("hard_negative_pairs_backward", &hard_negative_pairs_backward_cpu);
  m.impl("hard_negative_points_backward", &hard_negative_points_backward_cpu);
  m.impl("scatter_backward_emulated", &scatter_backward_emulated_cpu);
  m.impl("search_tiles_emulated", &search_tiles_emulated_cpu);
}

}  // namespace ee
