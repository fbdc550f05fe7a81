// What the CPU backwards of the searches share (docs/design.md §5): the pairs' components, the points' gradient
// coefficients, the gather of every output's gradient into a dense dG and per-point own sums, the own entries
// added in D-space. Their inputs come from reference_inputs.h, a batch being its own reference.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include "../common/reference_inputs.h"
#include "../common/ee_math.h"
#include "../common/search_tiles.h"
#include "point_coef_cpu.h"
#include "simd_cpu.h"

namespace ee {

// The connected components of the graph whose nodes are the rows of X and whose edges are the pairs: the
// rows of different components are disjoint, so one task per component owns its rows (for "adjacent"
// pairs a component is one pair, for "all" pairs one class).
struct PairComponents {
  std::vector<int64_t> offsets, pair;  // the pairs of component c: pair[offsets[c] .. offsets[c+1])
};

inline PairComponents pair_components(const int64_t* pairs, int64_t P, int64_t B) {
  std::vector<int64_t> parent(B);
  for (int64_t a = 0; a < B; ++a) parent[a] = a;
  auto root = [&](int64_t a) {
    while (parent[a] != a) a = parent[a] = parent[parent[a]];
    return a;
  };
  for (int64_t p = 0; p < P; ++p) {
    const int64_t i = root(pairs[2 * p]), j = root(pairs[2 * p + 1]);
    if (i != j) parent[std::max(i, j)] = std::min(i, j);
  }
  PairComponents pc;
  std::vector<int64_t> id(B, -1), of_row(B, -1);  // component of each row
  int64_t count = 0;
  for (int64_t p = 0; p < P; ++p)
    for (int e = 0; e < 2; ++e) {
      const int64_t a = pairs[2 * p + e], r = root(a);
      if (id[r] < 0) id[r] = count++;
      of_row[a] = id[r];
    }
  pc.offsets.assign(count + 1, 0);
  for (int64_t p = 0; p < P; ++p) ++pc.offsets[of_row[pairs[2 * p]] + 1];
  for (int64_t c = 0; c < count; ++c) pc.offsets[c + 1] += pc.offsets[c];
  pc.pair.resize(P);
  std::vector<int64_t> fill(pc.offsets.begin(), pc.offsets.end() - 1);
  for (int64_t p = 0; p < P; ++p) pc.pair[fill[of_row[pairs[2 * p]]]++] = p;
  return pc;
}

// The CUDA backward's per-output scatter run serially, then (dG + dG^T) X: the tests' route (routes_cpu.h).
at::Tensor scatter_backward_cpu(const ReferenceBackward& in, int64_t n, bool normalize, bool points);

// One side of a backward: its pairs and their points' gradient coefficients, grad[q * T + r].
template <typename acc_t>
struct GradSide {
  const int64_t* pairs;
  int64_t count;
  std::vector<PointGradCoef<acc_t>> grad;

  GradSide(const at::Tensor& X, const at::Tensor& pairs_, int64_t n, bool normalize)
      : pairs(pairs_.data_ptr<int64_t>()), count(pairs_.size(0)), grad(count * (n + 2)) {
    for_each_pair_norms<acc_t>(X, pairs_, n, [&](int64_t p, const acc_t* norm) {
      for (int64_t t = 0; t < n + 2; ++t) grad[p * (n + 2) + t] = point_grad_coef_of_norm(norm[t], t, n, normalize);
    });
  }
};

// Every output's gradient terms (output o: in.grad[o], in.dist[o], in.index[o]): cross entries into dG (query
// rows x reference rows), own factors summed per point into own (P x T) and ref_own (Q x T; within a batch the
// same points, kept apart). A query pair's outputs are taken by the task of its component, which owns the
// pair's rows of dG and its own sums; ref_own is summed per task, in task order: deterministic.
template <bool kPoints, typename acc_t>
void gather_gradient(const GradSide<acc_t>& query, const GradSide<acc_t>& ref, const ReferenceBackward& in, int64_t n,
                     at::Tensor& dG_t, std::vector<acc_t>& own, std::vector<acc_t>& ref_own) {
  const acc_t *g = in.grad.data_ptr<acc_t>(), *d = in.dist.data_ptr<acc_t>();
  const int64_t* idx = in.index.data_ptr<int64_t>();
  acc_t* dG = dG_t.data_ptr<acc_t>();
  const int64_t cols = dG_t.size(1);
  const int64_t T = n + 2, P = query.count, Q = ref.count, outputs = kPoints ? T : Q;
  own.assign(P * T, acc_t(0));
  ref_own.assign(Q * T, acc_t(0));
  const PairComponents pc = pair_components(query.pairs, P, dG_t.size(0));
  std::map<int64_t, std::vector<acc_t>> ref_own_of_task;
  std::mutex ref_own_mutex;
  at::parallel_for(0, int64_t(pc.offsets.size()) - 1, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> task_ref_own(Q * T, acc_t(0));
    auto cross = [&](int64_t row, int64_t col, acc_t v) { dG[row * cols + col] += v; };
    for (int64_t c = pc.offsets[begin]; c < pc.offsets[end]; ++c) {
      const int64_t p = pc.pair[c], i = query.pairs[2 * p], j = query.pairs[2 * p + 1];
      for (int64_t u = 0; u < outputs; ++u) {
        const int64_t o = p * outputs + u, t = kPoints ? u : idx[2 * o], q = kPoints ? idx[2 * o] : u;
        const int64_t r = idx[2 * o + 1];
        if (t < 0 || r < 0 || t >= T || r >= T || q < 0 || q >= Q) continue;  // -1: no negative
        const DistanceGrad<acc_t> gr = distance_grad(query.grad[p * T + t], ref.grad[q * T + r], d[o], g[o]);
        if (!gr.any) continue;
        cross_entries(i, j, ref.pairs[2 * q], ref.pairs[2 * q + 1], gr, cross);
        own[p * T + t] += gr.own_a;
        task_ref_own[q * T + r] += gr.own_b;
      }
    }
    std::lock_guard<std::mutex> lock(ref_own_mutex);
    ref_own_of_task.emplace(begin, std::move(task_ref_own));
  });
  for (const auto& [begin, task_ref_own] : ref_own_of_task)
    for (int64_t e = 0; e < Q * T; ++e) ref_own[e] += task_ref_own[e];
}

// dY += S Y for the own entries of `pairs` given their points' own sums own[q * T + r] (gather_gradient()):
// pair (k, l)'s entries (kk, kl, ll) are the sums times each point's own_weights(); S = E + E^T. A pair's rows
// belong to the task of its component.
template <typename acc_t>
void add_own_entries(acc_t* dY, const at::Tensor& Y, const at::Tensor& pairs, const std::vector<acc_t>& own,
                     int64_t n) {
  const int64_t D = Y.size(1);
  const int64_t* pr = pairs.data_ptr<int64_t>();
  const acc_t* y = Y.data_ptr<acc_t>();
  const PairComponents pc = pair_components(pr, pairs.size(0), Y.size(0));
  at::parallel_for(0, int64_t(pc.offsets.size()) - 1, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = pc.offsets[begin]; c < pc.offsets[end]; ++c) {
      const int64_t p = pc.pair[c], rows[2] = {pr[2 * p], pr[2 * p + 1]};
      acc_t entries[3] = {}, w[3], to_k[2], to_l[2];
      for (int64_t r = 0; r < n + 2; ++r) {
        own_weights<acc_t>(r, n, w[0], w[1], w[2]);
        for (int k = 0; k < 3; ++k) entries[k] += own[p * (n + 2) + r] * w[k];
      }
      own_rows(entries, to_k, to_l);
      add_weighted_rows(y, D, rows, to_k, int64_t(2), dY + rows[0] * D);
      add_weighted_rows(y, D, rows, to_l, int64_t(2), dY + rows[1] * D);
    }
  });
}

}  // namespace ee
