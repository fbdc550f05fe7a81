// hard_negative_pairs' backward through its selected points, in D-space (pairs_backward_cpu.cpp picks it when
// 2 P^2 <= B^2, the adjacent layout). Output (p, q) selects point a of p = (i, j) and point b of q = (k, l); its
// cross entries add cross * (alpha_a, beta_a) times b's gradient point y_b = alpha_b x_k + beta_b x_l to rows
// (i, j) of dX (and the mirror to rows (k, l), from q's side). So rows (i, j) receive one gradient point of
// each q from (p, q) and (q, p), the same point of q unless a tie was resolved differently: about 2 P^2 D
// multiply-adds in all, against the B^2 D of (dG + dG^T) X. Every output is differentiated twice, once per
// side, each side adding its own point's own factor.
//
// Pairs q are taken a chunk at a time, their gradient points stored block by block (block b holds columns
// [b Wb, (b+1) Wb) of every point, Wb = 128 bytes, zero-padded past D): summing dX rows block by block, over
// all pairs before the next block, keeps the chunk's block in L1 while every pair reads it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/ee_math.h"
#include "search_backward_cpu.h"
#include "simd_cpu.h"

namespace ee {

template <typename acc_t>
struct ColumnBlocks {
  static constexpr int kVectors = 4;
  static constexpr int64_t kWidth = Lanes<acc_t>::kWidth * kVectors;  // columns per block: 128 bytes
  int64_t rows, blocks;

  ColumnBlocks(int64_t rows_, int64_t D) : rows(rows_), blocks((D + kWidth - 1) / kWidth) {}
  int64_t size() const { return rows * blocks * kWidth; }
  acc_t* row(acc_t* y, int64_t b, int64_t r) const { return y + (b * rows + r) * kWidth; }
};

// Row m of y: alpha x_k + beta x_l, its padding zero.
template <typename acc_t>
EE_LANES_INLINE void write_gradient_point_impl(const ColumnBlocks<acc_t>& layout, acc_t* y, int64_t m,
                                               const acc_t* xk, const acc_t* xl, acc_t alpha, acc_t beta, int64_t D) {
  using V = typename Lanes<acc_t>::V;
  constexpr int W = Lanes<acc_t>::kWidth;
  constexpr int64_t kBlock = ColumnBlocks<acc_t>::kWidth;
  for (int64_t b = 0; b < layout.blocks; ++b) {
    acc_t* out = layout.row(y, b, m);
    const int64_t d0 = b * kBlock;
    if (d0 + kBlock <= D) {
      for (int k = 0; k < ColumnBlocks<acc_t>::kVectors; ++k)
        store_lanes(out + k * W, alpha * load_lanes<V>(xk + d0 + k * W) + beta * load_lanes<V>(xl + d0 + k * W));
    } else {
      for (int64_t k = 0; k < kBlock; ++k) out[k] = d0 + k < D ? alpha * xk[d0 + k] + beta * xl[d0 + k] : acc_t(0);
    }
  }
}
EE_VECTORIZED(write_gradient_point)

// The terms of each pair p's rows from one chunk: term u multiplies the chunk's gradient point point[u] by c0[u]
// (row i) and c1[u] (row j); p's terms start at p * slots.
template <typename acc_t>
struct ChunkTerms {
  int64_t slots;
  std::vector<int32_t> point;
  std::vector<acc_t> c0, c1;
  std::vector<int64_t> count;

  ChunkTerms(int64_t P, int64_t slots_) : slots(slots_), point(P * slots), c0(P * slots), c1(P * slots), count(P) {}
};

// For the pairs pair_ids[0 .. pair_count) over one column block of dX (row r at r * stride): rows (i, j) of
// pair p add sum_u c0[u] y[point[u]], sum_u c1[u] y[point[u]] (i != j: check_pair_values rejects (i, i)).
// Eight accumulators, the point's four vectors and the two weights fit the sixteen vector registers.
template <typename acc_t>
EE_LANES_INLINE void add_gradient_points_impl(const acc_t* block, const int64_t* pair_ids, int64_t pair_count,
                                              const int64_t* pairs, const ChunkTerms<acc_t>& terms, acc_t* dx_block,
                                              int64_t stride) {
  using V = typename Lanes<acc_t>::V;
  constexpr int W = Lanes<acc_t>::kWidth, kVectors = ColumnBlocks<acc_t>::kVectors;
  constexpr int64_t kBlock = ColumnBlocks<acc_t>::kWidth;
  for (int64_t e = 0; e < pair_count; ++e) {
    const int64_t p = pair_ids[e], count = terms.count[p];
    if (count == 0) continue;
    if (e + 4 < pair_count)  // rows `stride` apart, a page each: the hardware does not prefetch them
      for (int r = 0; r < 2; ++r)
        for (int64_t k = 0; k < kBlock; k += 64 / int64_t(sizeof(acc_t)))
          __builtin_prefetch(dx_block + pairs[2 * pair_ids[e + 4] + r] * stride + k, 1);
    acc_t *y0 = dx_block + pairs[2 * p] * stride, *y1 = dx_block + pairs[2 * p + 1] * stride;
    const int32_t* m = terms.point.data() + p * terms.slots;
    const acc_t *c0 = terms.c0.data() + p * terms.slots, *c1 = terms.c1.data() + p * terms.slots;
    V a[kVectors], b[kVectors];
    for (int k = 0; k < kVectors; ++k) {
      a[k] = load_lanes<V>(y0 + k * W);
      b[k] = load_lanes<V>(y1 + k * W);
    }
    for (int64_t u = 0; u < count; ++u) {
      const acc_t* r = block + int64_t(m[u]) * kBlock;
      for (int k = 0; k < kVectors; ++k) {
        const V v = load_lanes<V>(r + k * W);
        a[k] += c0[u] * v;
        b[k] += c1[u] * v;
      }
    }
    for (int k = 0; k < kVectors; ++k) {
      store_lanes(y0 + k * W, a[k]);
      store_lanes(y1 + k * W, b[k]);
    }
  }
}
EE_VECTORIZED(add_gradient_points)

template <typename acc_t>
at::Tensor pairs_backward_through_points(const ReferenceBackward& in, const GradSide<acc_t>& side, int64_t n) {
  const at::Tensor& X = in.X;
  const int64_t B = X.size(0), D = X.size(1), P = side.count, T = n + 2;
  constexpr int64_t kW = ColumnBlocks<acc_t>::kWidth;
  const int64_t stride = ColumnBlocks<acc_t>(1, D).blocks * kW;  // D rounded up to whole column blocks
  // Pairs per chunk: their points' block within about 20 KiB of L1, and all their points within the bytes of
  // the B x B Gram matrix the forward held, so that the backward needs no more memory than the forward.
  const int64_t chunk =
      std::max<int64_t>(1, std::min({P, 20480 / (T * kW * int64_t(sizeof(acc_t))), B * B / (T * stride)}));
  const int64_t *pr = side.pairs, *idx = in.index.data_ptr<int64_t>();
  const acc_t *g = in.grad.data_ptr<acc_t>(), *d = in.dist.data_ptr<acc_t>(), *x = X.data_ptr<acc_t>();
  const PairComponents pc = pair_components(pr, P, B);
  const int64_t components = int64_t(pc.offsets.size()) - 1;
  std::vector<acc_t> own(P * T, acc_t(0));  // per point: the sum of its own factors
  // dX with rows padded to whole column blocks (the sums add whole blocks): no copy when D is a multiple.
  at::Tensor dX_t = at::zeros({B, stride}, X.options());
  acc_t* dX = dX_t.data_ptr<acc_t>();
  std::vector<acc_t> y(ColumnBlocks<acc_t>(chunk * T, D).size());
  ChunkTerms<acc_t> terms(P, 2 * chunk);  // a chunk gives p at most two terms per q
  for (int64_t q0 = 0; q0 < P; q0 += chunk) {
    const int64_t q1 = std::min(P, q0 + chunk);
    const ColumnBlocks<acc_t> layout((q1 - q0) * T, D);
    at::parallel_for(q0 * T, q1 * T, 1, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const int64_t q = o / T;
        write_gradient_point(layout, y.data(), o - q0 * T, x + pr[2 * q] * D, x + pr[2 * q + 1] * D,
                             side.grad[o].alpha, side.grad[o].beta, D);
      }
    });
    at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        if (p + 8 < end) {  // row p + 8 from column q0: a page away from row p's, not prefetched by the hardware
          const int64_t ahead = (p + 8) * P + q0;
          for (int64_t k = 0; k < 2 * (q1 - q0); k += 8) __builtin_prefetch(idx + 2 * ahead + k);
          __builtin_prefetch(d + ahead);
          __builtin_prefetch(g + ahead);
        }
        int64_t count = 0;
        // Output (p, q) seen from p's side: p's point t, q's point r.
        auto term = [&](int64_t q, int64_t t, int64_t r, acc_t dist, acc_t grad) {
          if ((uint64_t(t) >= uint64_t(T)) | (uint64_t(r) >= uint64_t(T))) return;  // -1: no negative
          const DistanceGrad<acc_t> gr = distance_grad(side.grad[p * T + t], side.grad[q * T + r], dist, grad);
          if (!gr.any) return;
          const int64_t slot = p * terms.slots + count++;
          terms.point[slot] = int32_t((q - q0) * T + r);
          terms.c0[slot] = gr.cross * gr.aa;
          terms.c1[slot] = gr.cross * gr.ba;
          own[p * T + t] += gr.own_a;
        };
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t pq = p * P + q, qp = q * P + p;
          const int64_t *sel_pq = idx + 2 * pq, *sel_qp = idx + 2 * qp;
          // The forward's outputs mirror each other ((q, p) selects (b, a) where (p, q) selects (a, b), at the
          // same distance): then both give p the same term but for the factor g, so it is taken once with
          // g_pq + g_qp. Any other (q, p) (a tie resolved the other way, a caller's own index) is taken alone.
          if (sel_qp[0] == sel_pq[1] && sel_qp[1] == sel_pq[0] && d[qp] == d[pq]) {
            term(q, sel_pq[0], sel_pq[1], d[pq], g[pq] + g[qp]);
          } else {
            term(q, sel_pq[0], sel_pq[1], d[pq], g[pq]);
            term(q, sel_qp[1], sel_qp[0], d[qp], g[qp]);
          }
        }
        terms.count[p] = count;
      }
    });
    at::parallel_for(0, components, 1, [&](int64_t begin, int64_t end) {
      const int64_t* pair_ids = pc.pair.data() + pc.offsets[begin];
      for (int64_t b = 0; b < layout.blocks; ++b)
        add_gradient_points(layout.row(y.data(), b, 0), pair_ids, pc.offsets[end] - pc.offsets[begin], pr, terms,
                            dX + b * kW, stride);
    });
  }
  at::Tensor out = stride == D ? dX_t : dX_t.narrow(1, 0, D).contiguous();
  add_own_entries(out.data_ptr<acc_t>(), X, in.pairs, own, n);
  return out;
}

}  // namespace ee
