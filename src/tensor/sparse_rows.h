// SparseRows: a row-sparse gradient or update for a [num_rows, ...] tensor
// (embedding tables): values[i] belongs to row indices[i]. Indices may repeat
// until coalesce() sums them.
// Thread safety: a value type. Errors: UsageError on rows out of range or
// shapes that do not fit.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace dtrain {

struct SparseRows {
  std::vector<int64_t> indices;
  Tensor values;  // [indices.size(), row...]
  int64_t num_rows = 0;

  // Sums duplicate indices; afterwards indices are sorted and unique.
  void coalesce();
  // dense[indices[i]] += scale * values[i]; dense is [num_rows, row...].
  void add_to(const Tensor& dense, float scale = 1.0f) const;
};

}  // namespace dtrain
