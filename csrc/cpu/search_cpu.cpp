// CPU kernels of hard_negative_pairs / hard_negative_points (forward and backward), docs/design.md §3-§5.
//
// Forward: one X X^T (BLAS, upper block triangle only), then either the vectorized row path of
// search_rows_cpu.h (finite input; the point coefficients straight into its block layout) or, from a (P, T)
// table of point coefficients, the tiles of search_tiles.h driven over the (p, q) grid with
// at::parallel_for (each tile emulates one CUDA block).
// Backward, by cost (docs/design.md §5): hard_negative_pairs has P x P outputs; where 2 P^2 <= B^2 (the adjacent
// layout) each pair's rows add one gradient point of every other pair in D-space (2 P^2 D multiply-adds),
// else their gradients are gathered into a dense dG (rows owned by the task of their pair component, no
// races) and finished with dX = (dG + dG^T) X, one B x B x D product. hard_negative_points has P x T
// outputs, so their few dG entries are merged per row and each row of dX is summed in D-space from the
// rows of X they name. The tests can force each route (route_cpu.h), the CUDA backward's serial scatter among
// them.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "../common/checks.h"
#include "../common/search_tiles.h"
#include "coef_table_cpu.h"
#include "gradient_points_cpu.h"
#include "pair_components_cpu.h"
#include "pair_terms_cpu.h"
#include "route_cpu.h"
#include "row_sums_cpu.h"
#include "search_rows_cpu.h"
#include "symmetric_cpu.h"
#include "tiles_cpu.h"

namespace ee {
namespace {

using at::Tensor;

// G = X X^T. G is symmetric, so for large B only the block rows on and right of the diagonal are multiplied,
// one BLAS call per panel of 64 rows (G[i0:i0+64, i0:] = X[i0:i0+64] X[i0:]^T, written into G's storage:
// about half the full product), and `lower_missing` is set: the lower triangle is then filled by
// mirror_upper(), which also makes G exactly symmetric, unless the search reads the upper one only.
// Panels rather than square blocks: fewer, longer BLAS calls, so less packing of the operands.
Tensor gram_upper_cpu(const Tensor& X, bool& lower_missing) {
  constexpr int64_t kPanelRows = 64, kMinRows = 512;
  const int64_t B = X.size(0);
  lower_missing = B >= kMinRows;
  if (!lower_missing) return at::mm(X, X.t());
  Tensor G = at::empty({B, B}, X.options());
  for (int64_t i0 = 0; i0 < B; i0 += kPanelRows) {
    const int64_t rows = std::min(kPanelRows, B - i0);
    Tensor panel = G.narrow(0, i0, rows).narrow(1, i0, B - i0);
    at::mm_out(panel, X.narrow(0, i0, rows), X.narrow(0, i0, B - i0).t());
  }
  return G;
}

// Whether every pair's rows come after the rows of all pairs before it (max(i_p, j_p) < min(i_q, j_q) for
// p < q; the "adjacent" layout of a batch sorted by class): the pair search, which visits q >= p, then reads
// Gram entries of the upper triangle (row < column) along rows, and the lower one need not be filled in.
bool pairs_ascending(const int64_t* pairs, int64_t P) {
  int64_t seen = -1;
  for (int64_t q = 0; q < P; ++q) {
    if (std::min(pairs[2 * q], pairs[2 * q + 1]) <= seen) return false;
    seen = std::max(pairs[2 * q], pairs[2 * q + 1]);
  }
  return true;
}

// The search on the CPU. Finite inputs take the vectorized row path (search_rows_cpu.h) and inputs with NaN
// or infinities the tile path (as do shapes whose keys overflow the row path's lanes, and every search when
// the tests force it: route_cpu.h), which drives the CUDA kernels' tile functions block by block.
template <bool kPoints>
std::tuple<Tensor, Tensor> search_cpu(const Tensor& X_, const Tensor& pairs_, const Tensor& labels, int64_t n,
                                      bool normalize) {
  constexpr bool points = kPoints;
  check_search_inputs(X_, pairs_, labels, n);
  const Tensor pairs = pairs_.contiguous();
  check_pair_values_on_cpu(pairs, X_.size(0), labels);
  const int64_t P = pairs.size(0), T = n + 2, cols = points ? T : P;
  // dist in the accumulation type (float for half inputs): the backward reads it, and the public op rounds it
  // to X's dtype.
  Tensor dist = at::empty({P, cols}, X_.options().dtype(acc_type_of(X_)));
  Tensor index = at::empty({P, cols, 2}, pairs.options());
  if (P == 0) return {dist, index};
  const Tensor X = X_.to(acc_type_of(X_)).contiguous();
  bool lower_missing = false;
  const Tensor gram = gram_upper_cpu(X, lower_missing);
  // X has a NaN or an infinity exactly when a diagonal Gram entry ||x_a||^2 does (or when it overflows): a
  // B-element check instead of one over X.
  const bool finite = at::isfinite(gram.diagonal()).all().item<bool>();
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_search_cpu", [&] {
    using acc_t = scalar_t;
    const bool tiles = cpu_routes().tiles || !finite || !row_keys_fit<acc_t>(P, T, points);
    const bool upper_only = !tiles && !points && pairs_ascending(pairs.data_ptr<int64_t>(), P);
    if (lower_missing && !upper_only) mirror_upper(gram.data_ptr<acc_t>(), X.size(0));
    acc_t* d = dist.data_ptr<acc_t>();
    int64_t* idx = index.data_ptr<int64_t>();
    if (tiles) {
      const TileSet<acc_t> set(X, pairs, labels, n, normalize);
      const SearchArgs<acc_t> args{gram.data_ptr<acc_t>(), set.view(), set.view(), T, true};
      points ? run_point_tiles(args, d, idx) : run_pair_tiles(args, d, idx);
    } else {
      const PairBlocks<acc_t> pb(X, pairs, labels.contiguous(), n, normalize);
      const acc_t* g = gram.data_ptr<acc_t>();
      points ? point_rows_cpu(pb, pb, g, X.size(0), d, idx) : pair_rows_cpu(pb, pb, g, X.size(0), upper_only, d, idx);
    }
  });
  return {dist, index};
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

// The raw arrays of BackwardInputs, with the norms the point coefficients are rebuilt from (norm_table_cpu():
// a quarter of the coefficient table's bytes; a point's coefficients are formed where they are read).
template <typename acc_t>
struct BackwardArrays {
  Tensor norm_table;
  const acc_t* norm;
  const int64_t *pairs, *index;
  const acc_t *grad, *dist, *x;
  int64_t n;
  bool normalize;

  BackwardArrays(const BackwardInputs& in, int64_t n_, bool normalize_)
      : norm_table(norm_table_cpu<acc_t>(in.X, in.pairs, n_)),
        norm(norm_table.data_ptr<acc_t>()),
        pairs(in.pairs.data_ptr<int64_t>()),
        index(in.index.data_ptr<int64_t>()),
        grad(in.grad.data_ptr<acc_t>()),
        dist(in.dist.data_ptr<acc_t>()),
        x(in.X.data_ptr<acc_t>()),
        n(n_),
        normalize(normalize_) {}

  // The PointGradCoef of point o = p*T + t.
  PointGradCoef<acc_t> grad_coef(int64_t o) const {
    const int64_t t = o % (n + 2);
    return point_grad_coef(point_coef_of_norm(norm[o], t, n, normalize), t, n, normalize);
  }

  // grad_coef() of every point, formed once (the dG route reads them per output).
  std::vector<PointGradCoef<acc_t>> grad_coef_table(int64_t P) const {
    std::vector<PointGradCoef<acc_t>> table(P * (n + 2));
    for (int64_t o = 0; o < P * (n + 2); ++o) table[o] = grad_coef(o);
    return table;
  }
};

// The own entries of a pair (k, l), given per point the sum of its own entries' factors (own[r], r < T): the
// sums over r of factor times the point's weights, at (k, k), (k, l) and (l, l) of dG.
template <typename acc_t>
struct OwnEntries {
  acc_t kk = 0, kl = 0, ll = 0;

  OwnEntries(const acc_t* own, int64_t n) {
    for (int64_t r = 0; r < n + 2; ++r) {
      acc_t ii, ij, jj;
      own_weights<acc_t>(r, n, ii, ij, jj);
      kk += own[r] * ii;
      kl += own[r] * ij;
      ll += own[r] * jj;
    }
  }
};

// The own entries of every pair, own[q*T + r] holding point r of pair q's sum.
template <typename acc_t, typename Emit>
void own_entries(const std::vector<acc_t>& own, const int64_t* pairs, int64_t P, int64_t n, Emit&& emit) {
  for (int64_t q = 0; q < P; ++q) {
    const OwnEntries<acc_t> e(own.data() + q * (n + 2), n);
    emit(pairs[2 * q], pairs[2 * q], e.kk);
    emit(pairs[2 * q], pairs[2 * q + 1], e.kl);
    emit(pairs[2 * q + 1], pairs[2 * q + 1], e.ll);
  }
}

// hard_negative_pairs' backward through dG: every output's dG terms are gathered into a dense dG, then
// dX = (dG + dG^T) X, one B x B x D product. Each output (p, q) is computed once, by the task of p's
// component: its cross entries have their row in p's pair, owned by the task, and go straight into dG; the
// own entries of its two points are summed per point (each point's three own entries are its sum times
// fixed weights) in the task's (P, T) accumulator, and all of them reach dG at the end.
template <typename acc_t>
Tensor pairs_backward_through_gram(const BackwardArrays<acc_t>& arr, const std::vector<PointGradCoef<acc_t>>& gc,
                                   const Tensor& X, int64_t P) {
  const int64_t B = X.size(0), n = arr.n, T = n + 2;
  Tensor dG = at::zeros({B, B}, X.options());
  const int64_t *pr = arr.pairs, *idx = arr.index;
  const acc_t *g = arr.grad, *d = arr.dist;
  acc_t* out = dG.data_ptr<acc_t>();
  auto add = [out, B](int64_t row, int64_t col, acc_t v) { out[row * B + col] += v; };
  const PairComponents pc = pair_components(pr, P, B);
  const int64_t components = int64_t(pc.offsets.size()) - 1;
  // Per task, per point: the sum of its own entries' factors; the tasks' sums are added in task order after
  // the parallel region, so that the gradient does not depend on which task finished first.
  std::map<int64_t, std::vector<acc_t>> own_of_task;
  std::mutex own_mutex;
  constexpr int64_t kPrefetchOutputs = 64;
  at::parallel_for(0, components, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> own(P * T, acc_t(0));
    for (int64_t comp = begin; comp < end; ++comp)
      for (int64_t e = pc.offsets[comp]; e < pc.offsets[comp + 1]; ++e) {
        const int64_t p = pc.pair[e], i = pr[2 * p], j = pr[2 * p + 1];
        const int64_t* idx_p = idx + 2 * p * P;
        const acc_t *d_p = d + p * P, *g_p = g + p * P;
        const PointGradCoef<acc_t>* gc_p = gc.data() + p * T;
        acc_t* own_p = own.data() + p * T;
        for (int64_t q = 0; q < P; ++q) {
          // The index row (16 bytes an output) streams in too slowly with the hardware's prefetch alone.
          if (q % 4 == 0) __builtin_prefetch(idx_p + 2 * (q + kPrefetchOutputs));
          const int64_t t = idx_p[2 * q], r = idx_p[2 * q + 1];
          if ((uint64_t(t) >= uint64_t(T)) | (uint64_t(r) >= uint64_t(T))) continue;  // -1: no negative
          const DistanceGrad<acc_t> gr = distance_grad(gc_p[t], gc[q * T + r], d_p[q], g_p[q]);
          if (!gr.any) continue;
          cross_entries(i, j, pr[2 * q], pr[2 * q + 1], gr, add);
          own_p[t] += gr.own_a;
          own[q * T + r] += gr.own_b;
        }
      }
    std::lock_guard<std::mutex> lock(own_mutex);
    own_of_task.emplace(begin, std::move(own));
  });
  std::vector<acc_t> own_total(P * T, acc_t(0));
  for (const auto& [begin, own] : own_of_task)
    for (int64_t e = 0; e < P * T; ++e) own_total[e] += own[e];
  own_entries(own_total, pr, P, n, add);
  symmetrize_in_place(out, B);
  return at::mm(dG, X);
}

// hard_negative_pairs' backward through its selected points, in D-space. Output (p, q) selects point a of
// p = (i, j) and point b of q = (k, l); its cross terms add cross * (aa, ba) times b's gradient point
// y_b = ab x_k + bb x_l (gradient_points_cpu.h) to rows (i, j) of dX, and cross * (ab, bb) times y_a to rows
// (k, l). So rows (i, j) receive one gradient point of each q from (p, q) and (q, p), the same point of q
// unless a tie was resolved differently: about 2 P^2 D multiply-adds over all rows, against the B^2 D of
// (dG + dG^T) X. The own entries are summed per point, then added in D-space per pair.
// Pairs q are taken a chunk at a time (bounded memory: their gradient points, about 20 KiB per column
// block). For each chunk: the terms of every p, from (p, q) along p's row and from (q, p) along q's rows
// (both sequential reads), merged where they name the same point; then, block by block, the rows of dX,
// each task owning the rows of its components' pairs. Every output is differentiated twice, once per side.
template <typename acc_t>
Tensor pairs_backward_through_points(const BackwardArrays<acc_t>& arr, const Tensor& X, int64_t P) {
  const int64_t B = X.size(0), D = X.size(1), n = arr.n, T = n + 2;
  constexpr int64_t kW = ColumnBlocks<acc_t>::kWidth;
  const int64_t stride = ColumnBlocks<acc_t>(1, D).blocks * kW;  // D rounded up to whole column blocks
  // Pairs per chunk: their points' block within about 20 KiB of L1, and all their points within the bytes of
  // the B x B Gram matrix the forward held, so that the backward needs no more memory than the forward.
  const int64_t chunk =
      std::max<int64_t>(1, std::min({P, 20480 / (T * kW * int64_t(sizeof(acc_t))), B * B / (T * stride)}));
  const int64_t slots = 2 * chunk;  // terms of one p per chunk, at most
  constexpr int64_t kPrefetchRows = 8;
  const int64_t *pr = arr.pairs, *idx = arr.index;
  const acc_t *g = arr.grad, *d = arr.dist, *x = arr.x;
  const PairComponents pc = pair_components(pr, P, B);
  const int64_t components = int64_t(pc.offsets.size()) - 1;
  std::vector<acc_t> own(P * T, acc_t(0));  // per point: the sum of its own entries' factors
  // dX with rows padded to whole column blocks (the kernel adds whole blocks): no copy when D is a multiple.
  Tensor dX_t = at::zeros({B, stride}, X.options());
  acc_t* dX = dX_t.data_ptr<acc_t>();
  std::vector<acc_t> y(ColumnBlocks<acc_t>(chunk * T, D).size());
  const PointGradColumns<acc_t> columns(P * T, [&arr](int64_t o) { return arr.grad_coef(o); });
  std::vector<int32_t> term_point(P * slots);  // per p: the chunk's point of each term, and its weights
  std::vector<acc_t> term_c0(P * slots), term_c1(P * slots);
  std::vector<int64_t> term_count(P);
  std::vector<int64_t> col_sel(2 * P * chunk);  // the chunk's outputs (q, p), per p
  std::vector<acc_t> col_d(P * chunk), col_g(P * chunk);
  for (int64_t q0 = 0; q0 < P; q0 += chunk) {
    const int64_t q1 = std::min(P, q0 + chunk);
    const ColumnBlocks<acc_t> layout((q1 - q0) * T, D);
    at::parallel_for(q0 * T, q1 * T, 1, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const int64_t q = o / T;
        write_gradient_point(layout, y.data(), o - q0 * T, x + pr[2 * q] * D, x + pr[2 * q + 1] * D,
                             columns.alpha[o], columns.beta[o], D);
      }
    });
    const int64_t count_q = q1 - q0;
    at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
      // Outputs (q, p): the chunk's rows, read along them, stored per p (col_*[p * chunk + s]).
      for (int64_t q = q0; q < q1; ++q)
        for (int64_t p = begin; p < end; ++p) {
          const int64_t e = p * chunk + (q - q0);
          col_sel[2 * e] = idx[2 * (q * P + p)];
          col_sel[2 * e + 1] = idx[2 * (q * P + p) + 1];
          col_d[e] = d[q * P + p];
          col_g[e] = g[q * P + p];
        }
      for (int64_t p = begin; p < end; ++p) {
        // Row p at column q0: a page from row p - 1's, which the hardware does not prefetch.
        if (p + kPrefetchRows < end) {
          const int64_t o = (p + kPrefetchRows) * P + q0;
          for (int64_t k = 0; k < 2 * count_q; k += 64 / int64_t(sizeof(int64_t))) __builtin_prefetch(idx + 2 * o + k);
          __builtin_prefetch(d + o);
          __builtin_prefetch(g + o);
        }
        const int64_t o = p * P + q0, e = p * chunk;
        const ChunkOutputs<acc_t> outputs{idx + 2 * o, col_sel.data() + 2 * e, d + o, g + o, col_d.data() + e,
                                          col_g.data() + e, count_q};
        int32_t* tp = term_point.data() + p * slots;
        acc_t *t0 = term_c0.data() + p * slots, *t1 = term_c1.data() + p * slots;
        term_count[p] = pair_terms(columns, outputs, p, q0, T, TermSlots<acc_t>{tp, t0, t1}, own.data() + p * T);
      }
    });
    at::parallel_for(0, components, 1, [&](int64_t begin, int64_t end) {
      const BlockTerms<acc_t> terms{pc.pair.data() + pc.offsets[begin], pr, pc.offsets[end] - pc.offsets[begin],
                                    term_point.data(), term_c0.data(), term_c1.data(), term_count.data(), slots};
      for (int64_t b = 0; b < layout.blocks; ++b)
        add_gradient_points(layout.row(y.data(), b, 0), terms, dX + b * kW, stride);
    });
  }
  // The own entries in D-space; a pair's rows belong to its component, one task each.
  at::parallel_for(0, components, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = pc.offsets[begin]; c < pc.offsets[end]; ++c) {
      const int64_t p = pc.pair[c], k = pr[2 * p], l = pr[2 * p + 1];
      const OwnEntries<acc_t> e(own.data() + p * T, n);
      // S = dG + dG^T holds 2 kk at (k, k), kl at (k, l) and (l, k), 2 ll at (l, l).
      const int64_t rows[2] = {k, l};
      const acc_t to_k[2] = {e.kk + e.kk, e.kl}, to_l[2] = {e.kl, e.ll + e.ll};
      add_weighted_rows(x, D, rows, to_k, 2, dX + k * stride);
      add_weighted_rows(x, D, rows, to_l, 2, dX + l * stride);
    }
  });
  return stride == D ? dX_t : dX_t.narrow(1, 0, D).contiguous();
}

// The CUDA backward's scatter, run serially on the CPU (a route the tests force, route_cpu.h): every output
// adds all of its dG terms, as the GPU's atomics do, then dX = (dG + dG^T) X.
Tensor scatter_backward_cpu(const BackwardInputs& in, int64_t n, bool normalize, bool points) {
  const Tensor& X = in.X;
  const int64_t P = in.pairs.size(0), B = X.size(0), T = n + 2;
  Tensor dG = at::zeros({B, B}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "scatter_backward_cpu", [&] {
    using acc_t = scalar_t;
    const TileSet<acc_t> set(X, in.pairs, at::Tensor(), n, normalize);  // the tiles' PointCoef table
    const SearchArgs<acc_t> args{nullptr, set.view(), set.view(), T, true};
    const int64_t* idx = in.index.data_ptr<int64_t>();
    const acc_t *g = in.grad.data_ptr<acc_t>(), *d = in.dist.data_ptr<acc_t>();
    acc_t* out = dG.data_ptr<acc_t>();
    auto add = [&](int64_t r, int64_t col, acc_t v) { out[r * B + col] += v; };
    const WithinEntries<acc_t, decltype(add)> entries{set.view(), add};
    if (points) {
      for (int64_t o = 0; o < P * T; ++o) point_output_entries(args, normalize, o, d[o], g[o], idx, entries, entries);
    } else {
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < P; ++q)
          pair_output_entries(args, normalize, p, q, d[p * P + q], g[p * P + q], idx, entries, entries);
    }
  });
  return at::mm(dG + dG.t(), X);
}

// hard_negative_pairs' backward route: through the selected points where that costs fewer multiply-adds,
// about 2 P^2 D (adjacent pairs: P = B/2, half the product's) against B^2 D through dG.
BackwardRoute pairs_backward_route(int64_t P, int64_t B) {
  const auto forced = BackwardRoute(cpu_routes().backward.load());
  if (forced != BackwardRoute::kByCost) return forced;
  return 2 * P * P <= B * B ? BackwardRoute::kPoints : BackwardRoute::kGram;
}

Tensor hard_negative_pairs_backward_cpu(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_,
                                        const Tensor& dist_, const Tensor& index_, int64_t n, bool normalize) {
  const int64_t P = pairs_.size(0), B = X_.size(0);
  const BackwardInputs in = backward_inputs(grad_, X_, pairs_, dist_, index_, n, false);
  const Tensor& X = in.X;
  if (P == 0 || X_.numel() == 0) return at::zeros_like(X_);
  const BackwardRoute route = pairs_backward_route(P, B);
  if (route == BackwardRoute::kScatter) return scatter_backward_cpu(in, n, normalize, false).to(X_.scalar_type());
  Tensor dX;
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_pairs_backward_cpu", [&] {
    using acc_t = scalar_t;
    const BackwardArrays<acc_t> arr(in, n, normalize);
    dX = route == BackwardRoute::kPoints ? pairs_backward_through_points(arr, X, P)
                                         : pairs_backward_through_gram(arr, arr.grad_coef_table(P), X, P);
  });
  return dX.to(X_.scalar_type());
}

// hard_negative_points has P x T outputs, few next to B x B: dX = (dG + dG^T) X is summed in D-space from
// dG's entries, O(entries * D) instead of a B x B x D product. The four cross entries of each output are
// listed; the own entries are summed per point, then per pair (three entries each), and listed last. The
// list is flushed every kFlushEntries entries (bounded memory): mirrored into the rows of S = dG + dG^T,
// merged per (row, column), and each row of dX adds the rows of X its entries name (rows owned by tasks).
// The flush bound keeps the scratch small next to the op's own outputs, whatever P is.
Tensor hard_negative_points_backward_cpu(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_,
                                         const Tensor& dist_, const Tensor& index_, int64_t n, bool normalize) {
  const int64_t P = pairs_.size(0), B = X_.size(0), D = X_.size(1), T = n + 2;
  const BackwardInputs in = backward_inputs(grad_, X_, pairs_, dist_, index_, n, true);
  const Tensor& X = in.X;
  if (P == 0 || X_.numel() == 0) return at::zeros_like(X_);
  if (BackwardRoute(cpu_routes().backward.load()) == BackwardRoute::kScatter)
    return scatter_backward_cpu(in, n, normalize, true).to(X_.scalar_type());
  Tensor dX = at::zeros({B, D}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_points_backward_cpu", [&] {
    using acc_t = scalar_t;
    const BackwardArrays<acc_t> arr(in, n, normalize);
    const int64_t *pr = arr.pairs, *idx = arr.index;
    const acc_t *g = arr.grad, *d = arr.dist;
    const acc_t* x = arr.x;
    acc_t* out = dX.data_ptr<acc_t>();
    struct Entry {
      int64_t row, col;
      acc_t v;
    };
    constexpr size_t kFlushEntries = 512;
    std::vector<Entry> entries;
    entries.reserve(kFlushEntries);
    std::vector<int64_t> offsets(B + 1), fill(B);
    std::vector<std::pair<int64_t, acc_t>> row_terms(2 * kFlushEntries);
    auto flush = [&] {
      std::fill(offsets.begin(), offsets.end(), 0);
      for (const Entry& e : entries) {  // entry (r, c, v) adds v at (r, c) and at (c, r) of S
        ++offsets[e.row + 1];
        ++offsets[e.col + 1];
      }
      for (int64_t a = 0; a < B; ++a) offsets[a + 1] += offsets[a];
      std::copy(offsets.begin(), offsets.end() - 1, fill.begin());
      for (const Entry& e : entries) {
        row_terms[fill[e.row]++] = {e.col, e.v};
        row_terms[fill[e.col]++] = {e.row, e.v};
      }
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> slot_of(B, -1);  // column -> its slot in this row's merged terms
        std::vector<int64_t> cols;
        std::vector<acc_t> vals;
        for (int64_t a = begin; a < end; ++a) {
          if (offsets[a] == offsets[a + 1]) continue;
          cols.clear();
          vals.clear();
          for (int64_t e = offsets[a]; e < offsets[a + 1]; ++e) {
            const auto& [col, v] = row_terms[e];
            if (slot_of[col] < 0) {
              slot_of[col] = int64_t(cols.size());
              cols.push_back(col);
              vals.push_back(v);
            } else {
              vals[slot_of[col]] += v;
            }
          }
          for (const int64_t col : cols) slot_of[col] = -1;
          add_weighted_rows(x, D, cols.data(), vals.data(), int64_t(cols.size()), out + a * D);
        }
      });
      entries.clear();
    };
    auto add = [&](int64_t r, int64_t col, acc_t v) {
      entries.push_back({r, col, v});
      if (entries.size() == kFlushEntries) flush();
    };
    std::vector<acc_t> own(P * T, acc_t(0));  // per point: the sum of its own entries' factors
    for (int64_t o = 0; o < P * T; ++o) {
      const int64_t q = idx[2 * o], r = idx[2 * o + 1];
      if (q < 0 || r < 0 || q >= P || r >= T) continue;
      // P x T outputs, one per point: each point's PointGradCoef is formed as needed, not tabulated.
      const DistanceGrad<acc_t> gr = distance_grad(arr.grad_coef(o), arr.grad_coef(q * T + r), d[o], g[o]);
      if (!gr.any) continue;
      const int64_t p = o / T;
      cross_entries(pr[2 * p], pr[2 * p + 1], pr[2 * q], pr[2 * q + 1], gr, add);
      own[o] += gr.own_a;
      own[q * T + r] += gr.own_b;
    }
    own_entries(own, pr, P, n, [&](int64_t row, int64_t col, acc_t v) {
      if (v != acc_t(0)) add(row, col, v);
    });
    flush();
  });
  return dX.to(X_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CPU, m) {
  m.impl("hard_negative_pairs", &search_cpu<false>);
  m.impl("hard_negative_points", &search_cpu<true>);
  m.impl("hard_negative_pairs_backward", &hard_negative_pairs_backward_cpu);
  m.impl("hard_negative_points_backward", &hard_negative_points_backward_cpu);
}

}  // namespace ee
