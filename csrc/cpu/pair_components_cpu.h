// Which rows of X each task of a backward owns: the pairs' connected components.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ee {

// The connected components of the graph whose nodes are the rows of X and whose edges are the pairs: the
// rows of different components are disjoint, so one task per component owns its rows (for "adjacent"
// pairs a component is one pair, for "all" pairs one class).
struct PairComponents {
  std::vector<int64_t> of_row;         // component of each row, -1 for rows in no pair
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
  pc.of_row.assign(B, -1);
  std::vector<int64_t> id(B, -1);
  int64_t count = 0;
  for (int64_t p = 0; p < P; ++p)
    for (int e = 0; e < 2; ++e) {
      const int64_t a = pairs[2 * p + e], r = root(a);
      if (id[r] < 0) id[r] = count++;
      pc.of_row[a] = id[r];
    }
  pc.offsets.assign(count + 1, 0);
  for (int64_t p = 0; p < P; ++p) ++pc.offsets[pc.of_row[pairs[2 * p]] + 1];
  for (int64_t c = 0; c < count; ++c) pc.offsets[c + 1] += pc.offsets[c];
  pc.pair.resize(P);
  std::vector<int64_t> fill(pc.offsets.begin(), pc.offsets.end() - 1);
  for (int64_t p = 0; p < P; ++p) pc.pair[fill[pc.of_row[pairs[2 * p]]]++] = p;
  return pc;
}

}  // namespace ee
