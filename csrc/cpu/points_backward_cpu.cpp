// CPU backward of hard_negative_points (docs/design.md §5). Its P x T outputs are few next to B x B, so
// dX = (dG + dG^T) X is summed in D-space from dG's few entries instead of a B x B x D product: each output's
// cross entries are listed and flushed every kFlushEntries (bounded scratch) into the rows of S = dG + dG^T,
// merged per column; each row of dX adds the rows of X its entries name. The own entries are added per pair.
// Few outputs read each point: its gradient coefficients are formed where read from its pair_norms() entry.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "routes_cpu.h"
#include "search_backward_cpu.h"

namespace ee {
namespace {

using at::Tensor;

// Rows of S = dG + dG^T as lists (column, value) merged per column, and their sums dX[a] += S[a] X.
template <typename acc_t>
struct SparseRows {
  SparseRows(const acc_t* x, int64_t B, int64_t D, acc_t* dX) : x_(x), B_(B), D_(D), dX_(dX), offsets_(B + 1) {}

  void add(int64_t row, int64_t col, acc_t v) {
    entries_.push_back({row, col, v});
    if (entries_.size() == kFlushEntries) flush();
  }

  void flush() {
    std::fill(offsets_.begin(), offsets_.end(), 0);
    for (const Entry& e : entries_) {  // entry (r, c, v) adds v at (r, c) and at (c, r) of S
      ++offsets_[e.row + 1];
      ++offsets_[e.col + 1];
    }
    for (int64_t a = 0; a < B_; ++a) offsets_[a + 1] += offsets_[a];
    std::vector<int64_t> fill(offsets_.begin(), offsets_.end() - 1);
    std::vector<std::pair<int64_t, acc_t>> terms(2 * entries_.size());
    for (const Entry& e : entries_) {
      terms[fill[e.row]++] = {e.col, e.v};
      terms[fill[e.col]++] = {e.row, e.v};
    }
    at::parallel_for(0, B_, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> slot_of(B_, -1), cols;  // column -> its slot in this row's merged terms
      std::vector<acc_t> vals;
      for (int64_t a = begin; a < end; ++a) {
        cols.clear();
        vals.clear();
        for (int64_t e = offsets_[a]; e < offsets_[a + 1]; ++e) {
          const auto& [col, v] = terms[e];
          if (slot_of[col] < 0) {
            slot_of[col] = int64_t(cols.size());
            cols.push_back(col);
            vals.push_back(v);
          } else {
            vals[slot_of[col]] += v;
          }
        }
        for (const int64_t col : cols) slot_of[col] = -1;
        if (!cols.empty()) add_weighted_rows(x_, D_, cols.data(), vals.data(), int64_t(cols.size()), dX_ + a * D_);
      }
    });
    entries_.clear();
  }

  static constexpr size_t kFlushEntries = 512;
  struct Entry {
    int64_t row, col;
    acc_t v;
  };
  const acc_t* x_;
  int64_t B_, D_;
  acc_t* dX_;
  std::vector<Entry> entries_;
  std::vector<int64_t> offsets_;
};

Tensor hard_negative_points_backward_cpu(const Tensor& grad, const Tensor& X_, const Tensor& pairs, const Tensor& dist,
                                         const Tensor& index, int64_t n, bool normalize) {
  const ReferenceBackward in = reference_backward_inputs(grad, X_, pairs, X_, pairs, dist, index, n, true);
  const int64_t P = in.pairs.size(0), B = X_.size(0), D = X_.size(1), T = n + 2;
  if (in.empty) return at::zeros_like(X_);
  if (cpu_routes().scatter) return scatter_backward_cpu(in, n, normalize, true).to(X_.scalar_type());
  Tensor dX = at::zeros({B, D}, in.X.options());
  AT_DISPATCH_FLOATING_TYPES(in.X.scalar_type(), "hard_negative_points_backward_cpu", [&] {
    using acc_t = scalar_t;
    const int64_t *pr = in.pairs.data_ptr<int64_t>(), *idx = in.index.data_ptr<int64_t>();
    const acc_t *g = in.grad.data_ptr<acc_t>(), *d = in.dist.data_ptr<acc_t>(), *x = in.X.data_ptr<acc_t>();
    std::vector<acc_t> norm(P * T);
    for_each_pair_norms<acc_t>(in.X, in.pairs, n, [&](int64_t p, const acc_t* v) { std::copy_n(v, T, &norm[p * T]); });
    auto grad_coef = [&](int64_t o) { return point_grad_coef_of_norm(norm[o], o % T, n, normalize); };
    SparseRows<acc_t> rows(x, B, D, dX.data_ptr<acc_t>());
    std::vector<acc_t> own(P * T, acc_t(0));
    for (int64_t o = 0; o < P * T; ++o) {
      const int64_t q = idx[2 * o], r = idx[2 * o + 1], p = o / T;
      if (q < 0 || r < 0 || q >= P || r >= T) continue;
      const DistanceGrad<acc_t> gr = distance_grad(grad_coef(o), grad_coef(q * T + r), d[o], g[o]);
      if (!gr.any) continue;
      cross_entries(pr[2 * p], pr[2 * p + 1], pr[2 * q], pr[2 * q + 1], gr,
                    [&](int64_t row, int64_t col, acc_t v) { rows.add(row, col, v); });
      own[o] += gr.own_a;
      own[q * T + r] += gr.own_b;
    }
    rows.flush();
    add_own_entries(dX.data_ptr<acc_t>(), in.X, in.pairs, own, n);
  });
  return dX.to(X_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CPU, m) {
  m.impl("hard_negative_points_backward", &hard_negative_points_backward_cpu);
}

}  // namespace ee
