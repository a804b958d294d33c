// RowIndex: one embedding lookup's row indices, their sorted unique values
// and, for each position, which unique value it holds. The ps strategy pulls
// the unique rows before forward and, after backward, sums the gradient rows
// of each unique index from the same RowIndex, without sorting again.
//
// sum_rows() equals SparseRows::coalesce() bit for bit: each unique index's
// row is 0 plus its rows in position order (coalesce's stable sort keeps
// that order), and the unique indices are ascending. Indices in [0, 2^32)
// (every table a worker can hold) are sorted by a stable radix sort on the
// bytes that differ; others by std::stable_sort.
//
// Errors: UsageError for values whose row count is not the indices'. Thread
// safety: a value type; const calls may run concurrently. Never blocks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "tensor/tensor.h"

namespace dtrain::strategy {

struct RowIndex {
  std::vector<int64_t> indices;  // as looked up
  std::vector<int64_t> unique;   // ascending
  std::vector<uint32_t> slot;    // per position: its index into `unique`

  static RowIndex of(std::span<const int64_t> indices);
  // Whether `other` are exactly these indices (the lookup's backward).
  bool same_indices(std::span<const int64_t> other) const;
  // values [indices.size(), ...] -> [unique.size(), ...]: each unique index's
  // rows summed in position order, from zero.
  Tensor sum_rows(const Tensor& values) const;
};

}  // namespace dtrain::strategy
