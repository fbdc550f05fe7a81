// The forward search's tile path on the CPU: the tiles of search_tiles.h, each emulating one CUDA block (its
// shared memory a buffer, its threads a loop), so that the CPU tests check the GPU's tiling.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../common/search_tiles.h"
#include "point_coef_cpu.h"

namespace ee {

// One side of a tiled search on the CPU: its pairs' PointCoef table (point_coef_cpu.h) and, given labels,
// their labels. pairs: (P, 2) contiguous int64 with valid rows of the `rows` rows of its embeddings.
template <typename acc_t>
struct TileSet {
  at::Tensor coef, pairs, pair_label;
  int64_t rows;

  TileSet(const at::Tensor& coef_, const at::Tensor& pairs_, const at::Tensor& labels, int64_t rows_)
      : coef(coef_), pairs(pairs_), rows(rows_) {
    if (labels.defined()) pair_label = labels.index_select(0, pairs_.select(1, 0)).contiguous();
  }

  PairSet<acc_t> view() const {
    return PairSet<acc_t>{coef_ptr<acc_t>(coef), pairs.data_ptr<int64_t>(),
                          pair_label.defined() ? pair_label.data_ptr<int64_t>() : nullptr, pairs.size(0), rows};
  }
};

template <typename acc_t>
void run_pair_tiles(const SearchArgs<acc_t>& args, acc_t* dist, int64_t* index) {
  at::parallel_for(0, pair_tiles(args), 1, [&](int64_t begin, int64_t end) {
    std::vector<SharedWord> shared((pair_tile_bytes<acc_t>(args.T) + 15) / 16);  // the block's shared memory
    for (int64_t tile = begin; tile < end; ++tile) {
      int64_t bp, bq;
      pair_tile(args, tile, bp, bq);
      pair_tile_load(args, shared.data(), bp, bq, 0, 1);
      for (int tp = 0; tp < kPairTile; ++tp)
        for (int tq = 0; tq < kPairTile; ++tq) pair_tile_compute(args, shared.data(), bp, bq, tp, tq, dist, index);
    }
  });
}

template <typename acc_t>
void run_point_tiles(const SearchArgs<acc_t>& args, acc_t* dist, int64_t* index) {
  const int64_t blocks = (args.query.count * args.T + kPointBlock - 1) / kPointBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<SharedWord> shared((point_tile_bytes<acc_t>(args.T) + 15) / 16);
    std::vector<Best<acc_t>> best(kPointBlock);  // the block's registers
    for (int64_t block = begin; block < end; ++block) {
      const int64_t o0 = block * kPointBlock;
      for (auto& b : best) b = no_best<acc_t>();
      for (int64_t q0 = 0; q0 < args.ref.count; q0 += kPointTileQ) {
        point_tile_load(args, shared.data(), q0, 0, 1);
        for (int th = 0; th < kPointBlock; ++th) point_tile_compute(args, shared.data(), q0, o0 + th, best[th]);
      }
      for (int th = 0; th < kPointBlock; ++th) point_write(args, o0 + th, best[th], dist, index);
    }
  });
}

}  // namespace ee
