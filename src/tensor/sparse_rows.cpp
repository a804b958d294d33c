#include "tensor/sparse_rows.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/error.h"

namespace dtrain {
namespace {

// Elements per row of `values`, after checking that it has one row per index.
int64_t row_width(const SparseRows& rows, const char* what) {
  const auto count = static_cast<int64_t>(rows.indices.size());
  if (count == 0) return 0;
  if (!rows.values.defined() || rows.values.dim() == 0 || rows.values.size(0) != count) {
    throw UsageError(
        fmt::format("{}: {} indices but values have shape {}", what, count,
                    rows.values.defined() ? shape_str(rows.values.shape()) : "(undefined)"));
  }
  return rows.values.numel() / count;
}

void check_index(int64_t index, int64_t num_rows, const char* what) {
  if (index < 0 || index >= num_rows) {
    throw UsageError(fmt::format("{}: row {} out of range [0, {})", what, index, num_rows));
  }
}

}  // namespace

void SparseRows::coalesce() {
  const int64_t width = row_width(*this, "SparseRows::coalesce");
  const auto count = static_cast<int64_t>(indices.size());
  if (count == 0) return;
  for (int64_t index : indices) check_index(index, num_rows, "SparseRows::coalesce");
  std::vector<int64_t> order(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return indices[a] < indices[b]; });
  std::vector<int64_t> unique;
  unique.reserve(order.size());
  for (int64_t i : order) {
    if (unique.empty() || unique.back() != indices[i]) unique.push_back(indices[i]);
  }
  Shape shape = values.shape();
  shape[0] = static_cast<int64_t>(unique.size());
  Tensor summed = Tensor::zeros(shape);
  const float* src = values.data();
  float* dst = summed.data();
  int64_t out = -1;
  int64_t last = -1;
  for (int64_t i : order) {
    if (indices[i] != last) {
      ++out;
      last = indices[i];
    }
    float* row = dst + out * width;
    const float* in = src + i * width;
    for (int64_t j = 0; j < width; ++j) row[j] += in[j];
  }
  indices = std::move(unique);
  values = std::move(summed);
}

void SparseRows::add_to(const Tensor& dense, float scale) const {
  if (dense.dim() == 0 || dense.size(0) != num_rows) {
    throw UsageError(fmt::format("SparseRows::add_to: dense tensor {} does not have {} rows",
                                 shape_str(dense.shape()), num_rows));
  }
  const auto count = static_cast<int64_t>(indices.size());
  if (count == 0) return;
  const int64_t width = row_width(*this, "SparseRows::add_to");
  if (width * num_rows != dense.numel()) {
    throw UsageError(fmt::format("SparseRows::add_to: rows of values {} do not fit dense {}",
                                 shape_str(values.shape()), shape_str(dense.shape())));
  }
  const float* src = values.data();
  float* dst = dense.data();
  for (int64_t i = 0; i < count; ++i) {
    check_index(indices[i], num_rows, "SparseRows::add_to");
    float* row = dst + indices[i] * width;
    const float* in = src + i * width;
    for (int64_t j = 0; j < width; ++j) row[j] += scale * in[j];
  }
}

}  // namespace dtrain
