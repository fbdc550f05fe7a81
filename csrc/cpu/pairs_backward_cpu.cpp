// CPU backward of hard_negative_pairs (docs/design.md §5): the outputs' cross entries gathered into a dense dG
// (search_backward_cpu.h), then dX = (dG + dG^T) X and the own entries in D-space; and the CUDA scatter.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/search_tiles.h"
#include "gram_cpu.h"
#include "routes_cpu.h"
#include "search_backward_cpu.h"
#include "search_tiles_cpu.h"

namespace ee {

at::Tensor scatter_backward_cpu(const ReferenceBackward& in, int64_t n, bool normalize, bool points) {
  const at::Tensor& X = in.X;
  const int64_t P = in.pairs.size(0), B = X.size(0), T = n + 2;
  at::Tensor dG = at::zeros({B, B}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "scatter_backward_cpu", [&] {
    using acc_t = scalar_t;
    const TileSet<acc_t> set(coef_table_cpu<acc_t>(X, in.pairs, n, normalize), in.pairs, at::Tensor(), B);
    const SearchArgs<acc_t> args{nullptr, set.view(), set.view(), T, true};
    const int64_t* idx = in.index.data_ptr<int64_t>();
    const acc_t *g = in.grad.data_ptr<acc_t>(), *d = in.dist.data_ptr<acc_t>();
    acc_t* out = dG.data_ptr<acc_t>();
    auto add = [&](int64_t r, int64_t col, acc_t v) { out[r * B + col] += v; };
    const WithinEntries<acc_t, decltype(add)> entries{set.view(), add};
    for (int64_t o = 0; o < P * (points ? T : P); ++o) {
      if (points)
        point_output_entries(args, normalize, o, d[o], g[o], idx, entries, entries);
      else
        pair_output_entries(args, normalize, o / P, o % P, d[o], g[o], idx, entries, entries);
    }
  });
  return at::mm(dG + dG.t(), X);
}

namespace {

using at::Tensor;

Tensor hard_negative_pairs_backward_cpu(const Tensor& grad, const Tensor& X_, const Tensor& pairs, const Tensor& dist,
                                        const Tensor& index, int64_t n, bool normalize) {
  const ReferenceBackward in = reference_backward_inputs(grad, X_, pairs, X_, pairs, dist, index, n, false);
  if (in.empty) return at::zeros_like(X_);
  if (cpu_routes().scatter) return scatter_backward_cpu(in, n, normalize, false).to(X_.scalar_type());
  Tensor dX;
  AT_DISPATCH_FLOATING_TYPES(in.X.scalar_type(), "hard_negative_pairs_backward_cpu", [&] {
    using acc_t = scalar_t;
    const GradSide<acc_t> side(in.X, in.pairs, n, normalize);
    Tensor dG = at::zeros({X_.size(0), X_.size(0)}, in.X.options());
    std::vector<acc_t> own, ref_own;
    gather_gradient<false>(side, side, in, n, dG, own, ref_own);
    for (size_t e = 0; e < own.size(); ++e) own[e] += ref_own[e];
    mirror_in_place(dG.data_ptr<acc_t>(), dG.size(0), true);
    dX = at::mm(dG, in.X);
    add_own_entries(dX.data_ptr<acc_t>(), in.X, in.pairs, own, n);
  });
  return dX.to(X_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CPU, m) {
  m.impl("hard_negative_pairs_backward", &hard_negative_pairs_backward_cpu);
}

}  // namespace ee
