// CPU kernels of hard_negative_pairs / hard_negative_points against a reference set (docs/design.md §3-§5).
//
// Forward: one cross-Gram X ref_X^T (BLAS), then the row path of search_rows_cpu.h with the query pairs as rows
// and the reference's pairs as candidates (every endpoint of finite norm), or the tiles of search_tiles.h over
// the rectangular (p, q) grid, as the CUDA kernels run them.
// Backward: every output's entries (search_tiles.h) go into a dense cross dG (B x R), whose rows belong to the
// task of their query pair's component, and per pair into its own entries; then dX = dG ref_X and
// dref_X = dG^T X, the two products of the cross-Gram's own backward, plus the own entries in D-space.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <vector>

#include "../common/checks.h"
#include "../common/reference_inputs.h"
#include "../common/search_tiles.h"
#include "pair_components_cpu.h"
#include "route_cpu.h"
#include "row_sums_cpu.h"
#include "search_rows_cpu.h"
#include "tiles_cpu.h"

namespace ee {
namespace {

using at::Tensor;

template <bool kPoints>
std::tuple<Tensor, Tensor> search_reference_cpu(const Tensor& X_, const Tensor& pairs_, const Tensor& labels_,
                                                 const Tensor& ref_X_, const Tensor& ref_pairs_,
                                                 const Tensor& ref_labels_, int64_t n, bool normalize) {
  const ReferenceForward in =
      reference_forward_inputs(X_, pairs_, labels_, ref_X_, ref_pairs_, ref_labels_, n, kPoints);
  if (in.empty) return {in.dist, in.index};
  const Tensor &X = in.X, &Y = in.Y, &pairs = in.pairs, &labels = in.labels;
  const Tensor &ref_pairs = in.ref_pairs, &ref_labels = in.ref_labels;
  const int64_t Q = ref_pairs.size(0), T = n + 2;
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_search_reference_cpu", [&] {
    using acc_t = scalar_t;
    acc_t* d = in.dist.data_ptr<acc_t>();
    int64_t* idx = in.index.data_ptr<int64_t>();
    const acc_t* g = in.gram.data_ptr<acc_t>();
    if (!cpu_routes().tiles && row_keys_fit<acc_t>(Q, T, kPoints)) {
      const PairBlocks<acc_t> query(X, pairs, labels, n, normalize), ref(Y, ref_pairs, ref_labels, n, normalize);
      if (query.endpoints_finite() && ref.endpoints_finite()) {
        kPoints ? point_rows_cpu(query, ref, g, Y.size(0), d, idx)
                : pair_rows_cpu(query, ref, g, Y.size(0), false, d, idx);
        return;
      }
    }
    const TileSet<acc_t> query(X, pairs, labels, n, normalize), ref(Y, ref_pairs, ref_labels, n, normalize);
    const SearchArgs<acc_t> args{g, query.view(), ref.view(), T, false};
    kPoints ? run_point_tiles(args, d, idx) : run_pair_tiles(args, d, idx);
  });
  return {in.dist, in.index};
}

// dY += S Y for the own entries own (count, 3) of `pairs` (own_rows()); a pair's rows belong to its component.
template <typename acc_t>
void add_own_entries(Tensor& dY, const Tensor& Y, const Tensor& pairs, const std::vector<acc_t>& own) {
  const int64_t D = Y.size(1);
  const int64_t* pr = pairs.data_ptr<int64_t>();
  const acc_t* y = Y.data_ptr<acc_t>();
  acc_t* out = dY.data_ptr<acc_t>();
  const PairComponents pc = pair_components(pr, pairs.size(0), Y.size(0));
  at::parallel_for(0, int64_t(pc.offsets.size()) - 1, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = pc.offsets[begin]; c < pc.offsets[end]; ++c) {
      const int64_t p = pc.pair[c], rows[2] = {pr[2 * p], pr[2 * p + 1]};
      acc_t to_k[2], to_l[2];
      own_rows(own.data() + 3 * p, to_k, to_l);
      add_weighted_rows(y, D, rows, to_k, 2, out + rows[0] * D);
      add_weighted_rows(y, D, rows, to_l, 2, out + rows[1] * D);
    }
  });
}

template <bool kPoints>
std::tuple<Tensor, Tensor> search_reference_backward_cpu(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_,
                                                         const Tensor& ref_X_, const Tensor& ref_pairs_,
                                                         const Tensor& dist_, const Tensor& index_, int64_t n,
                                                         bool normalize, bool ref_grad) {
  const ReferenceBackward in =
      reference_backward_inputs(grad_, X_, pairs_, ref_X_, ref_pairs_, dist_, index_, n, kPoints);
  Tensor dX, dY;
  if (in.empty) return reference_gradients(X_, ref_X_, dX, dY, ref_grad);
  const Tensor &X = in.X, &Y = in.Y, &pairs = in.pairs, &ref_pairs = in.ref_pairs;
  const Tensor &grad = in.grad, &dist = in.dist, &index = in.index;
  const int64_t P = pairs.size(0), Q = ref_pairs.size(0), T = n + 2, B = X.size(0), R = Y.size(0);
  Tensor dG = at::zeros({B, R}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_search_reference_backward_cpu", [&] {
    using acc_t = scalar_t;
    const TileSet<acc_t> query(X, pairs, at::Tensor(), n, normalize), ref(Y, ref_pairs, at::Tensor(), n, normalize);
    const SearchArgs<acc_t> args{nullptr, query.view(), ref.view(), T, false};
    const int64_t* idx = index.data_ptr<int64_t>();
    const acc_t *g = grad.data_ptr<acc_t>(), *d = dist.data_ptr<acc_t>();
    acc_t* dg = dG.data_ptr<acc_t>();
    std::vector<acc_t> own(3 * P, acc_t(0)), ref_own(3 * Q, acc_t(0));
    const PairComponents pc = pair_components(pairs.data_ptr<int64_t>(), P, B);
    // Per task: the reference pairs' own entries, added in task order after the parallel region, so that the
    // gradient does not depend on which task finished first.
    std::map<int64_t, std::vector<acc_t>> ref_own_of_task;
    std::mutex ref_own_mutex;
    at::parallel_for(0, int64_t(pc.offsets.size()) - 1, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> task_ref_own(3 * Q, acc_t(0));
      auto cross = [&](int64_t row, int64_t col, acc_t v) { dg[row * R + col] += v; };
      auto own_entry = [&](int side, int64_t pair, int w, acc_t v) {
        (side == 0 ? own.data() : task_ref_own.data())[3 * pair + w] += v;
      };
      for (int64_t c = pc.offsets[begin]; c < pc.offsets[end]; ++c) {
        const int64_t p = pc.pair[c];
        if constexpr (kPoints) {
          for (int64_t o = p * T; o < (p + 1) * T; ++o)
            point_output_entries(args, normalize, o, d[o], g[o], idx, cross, own_entry);
        } else {
          for (int64_t q = 0; q < Q; ++q)
            pair_output_entries(args, normalize, p, q, d[p * Q + q], g[p * Q + q], idx, cross, own_entry);
        }
      }
      std::lock_guard<std::mutex> lock(ref_own_mutex);
      ref_own_of_task.emplace(begin, std::move(task_ref_own));
    });
    for (const auto& [begin, task_ref_own] : ref_own_of_task)
      for (int64_t e = 0; e < 3 * Q; ++e) ref_own[e] += task_ref_own[e];
    dX = at::mm(dG, Y);
    add_own_entries(dX, X, pairs, own);
    if (!ref_grad) return;
    dY = at::mm(dG.t(), X);
    add_own_entries(dY, Y, ref_pairs, ref_own);
  });
  return reference_gradients(X_, ref_X_, dX, dY, ref_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CPU, m) {
  m.impl("hard_negative_pairs_ref", &search_reference_cpu<false>);
  m.impl("hard_negative_points_ref", &search_reference_cpu<true>);
  m.impl("hard_negative_pairs_ref_backward", &search_reference_backward_cpu<false>);
  m.impl("hard_negative_points_ref_backward", &search_reference_backward_cpu<true>);
}

}  // namespace ee
