#include "strategy/row_index.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace dtrain::strategy {
namespace {

// Positions ordered by index, stable: (index << 32 | position) radix-sorted
// on the index bytes that are not the same in every key (LSD: each pass
// keeps the previous order among equal bytes, so positions stay ascending).
std::vector<uint64_t> sorted_by_radix(std::span<const int64_t> indices) {
  const size_t n = indices.size();
  std::vector<uint64_t> keys(n);
  uint64_t any = 0;
  uint64_t all = ~uint64_t{0};
  for (size_t i = 0; i < n; ++i) {
    const auto index = static_cast<uint64_t>(indices[i]);
    keys[i] = (index << 32) | i;
    any |= index;
    all &= index;
  }
  std::vector<uint64_t> other(n);
  for (int byte = 0; byte < 4; ++byte) {
    const int shift = 32 + 8 * byte;
    if ((((any ^ all) >> (8 * byte)) & 0xff) == 0) continue;  // the same in every key
    std::array<size_t, 257> start{};
    for (uint64_t k : keys) ++start[((k >> shift) & 0xff) + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    for (uint64_t k : keys) other[start[(k >> shift) & 0xff]++] = k;
    keys.swap(other);
  }
  return keys;
}

}  // namespace

RowIndex RowIndex::of(std::span<const int64_t> indices) {
  RowIndex r;
  r.indices.assign(indices.begin(), indices.end());
  const size_t n = indices.size();
  r.slot.resize(n);
  const bool small =
      n < (size_t{1} << 32) && std::all_of(indices.begin(), indices.end(), [](int64_t i) {
        return i >= 0 && i <= int64_t{std::numeric_limits<uint32_t>::max()};
      });
  std::vector<uint64_t> order;  // positions ordered by index, stable
  if (small) {
    order = sorted_by_radix(indices);
    for (uint64_t& k : order) k &= 0xffffffffu;
  } else {
    order.resize(n);
    std::iota(order.begin(), order.end(), uint64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](uint64_t a, uint64_t b) { return indices[a] < indices[b]; });
  }
  for (uint64_t position : order) {
    const int64_t index = indices[position];
    if (r.unique.empty() || r.unique.back() != index) r.unique.push_back(index);
    r.slot[position] = static_cast<uint32_t>(r.unique.size() - 1);
  }
  return r;
}

bool RowIndex::same_indices(std::span<const int64_t> other) const {
  return std::equal(indices.begin(), indices.end(), other.begin(), other.end());
}

Tensor RowIndex::sum_rows(const Tensor& values) const {
  if (!values.defined() || values.dim() < 1 ||
      values.size(0) != static_cast<int64_t>(slot.size())) {
    throw UsageError(fmt::format("RowIndex::sum_rows: values of shape {} for {} indices",
                                 values.defined() ? shape_str(values.shape()) : "undefined",
                                 slot.size()));
  }
  Shape shape = values.shape();
  shape[0] = static_cast<int64_t>(unique.size());
  Tensor summed = Tensor::zeros(shape);
  const int64_t width = slot.empty() ? 0 : values.numel() / static_cast<int64_t>(slot.size());
  const float* src = values.data();  // every Tensor is contiguous
  float* dst = summed.data();
  for (size_t i = 0; i < slot.size(); ++i) {
    float* row = dst + static_cast<int64_t>(slot[i]) * width;
    const float* g = src + static_cast<int64_t>(i) * width;
    for (int64_t j = 0; j < width; ++j) row[j] += g[j];
  }
  return summed;
}

}  // namespace dtrain::strategy
