// RowIndex (strategy/row_index.h) against SparseRows::coalesce(), bit for
// bit: the ps strategy's row gradients must not change a single bit.
#include "strategy/row_index.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/rng.h"
#include "tensor/sparse_rows.h"

namespace dtrain::strategy {
namespace {

std::vector<uint32_t> bits_of(const Tensor& t) {
  std::vector<uint32_t> bits(static_cast<size_t>(t.numel()));
  std::memcpy(bits.data(), t.data(), bits.size() * sizeof(uint32_t));
  return bits;
}

// Indices drawn from `range` values spread by `stride` (so that several
// bytes differ, or only high ones do), duplicates frequent; values with
// signed zeros and magnitudes far apart (the summation order shows).
void expect_coalesce(int64_t count, int64_t range, int64_t stride, int64_t width, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> indices(static_cast<size_t>(count));
  for (auto& i : indices)
    i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(range))) * stride;
  Tensor values = Tensor::zeros({count, width});
  float* v = values.data();
  for (int64_t i = 0; i < values.numel(); ++i) {
    const uint64_t kind = rng.below(4);
    v[i] = kind == 0 ? -0.0f : static_cast<float>(rng.normal()) * (kind == 1 ? 1e8f : 1e-3f);
  }
  SparseRows reference{indices, values, (range - 1) * stride + 1};
  reference.coalesce();
  const RowIndex index = RowIndex::of(indices);
  EXPECT_EQ(index.unique, reference.indices);
  EXPECT_TRUE(index.same_indices(indices));
  const Tensor summed = index.sum_rows(values);
  EXPECT_EQ(summed.shape(), reference.values.shape());
  EXPECT_EQ(bits_of(summed), bits_of(reference.values))
      << count << " indices over " << range << " x " << stride;
  for (size_t i = 0; i < indices.size(); ++i) {
    ASSERT_EQ(index.unique[index.slot[i]], indices[i]) << "position " << i;
  }
}

TEST(RowIndex, SumsEqualCoalesceBitForBit) {
  expect_coalesce(1024, 300, 1, 8, 1);                 // one or two differing bytes
  expect_coalesce(1024, 1 << 20, 1, 8, 2);             // a CTR table's range
  expect_coalesce(777, 50, 1 << 24, 3, 3);             // only the high byte differs
  expect_coalesce(4096, 7, 65536 + 1, 16, 4);          // few rows, many duplicates
  expect_coalesce(1, 1, 5, 4, 5);                      // one row
  expect_coalesce(500, 1000, int64_t{1} << 33, 2, 6);  // beyond 2^32: the stable_sort path
}

TEST(RowIndex, AnotherLookupIsNotTheSameAndBadValuesAreRefused) {
  const RowIndex index = RowIndex::of(std::vector<int64_t>{5, 3, 5});
  EXPECT_EQ(index.unique, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(index.slot, (std::vector<uint32_t>{1, 0, 1}));
  EXPECT_FALSE(index.same_indices(std::vector<int64_t>{5, 3}));
  EXPECT_FALSE(index.same_indices(std::vector<int64_t>{5, 3, 4}));
  EXPECT_THROW(index.sum_rows(Tensor::zeros({2, 4})), UsageError);
  const RowIndex empty = RowIndex::of({});
  EXPECT_TRUE(empty.unique.empty());
  EXPECT_EQ(empty.sum_rows(Tensor::zeros({0, 4})).shape(), (Shape{0, 4}));
}

}  // namespace
}  // namespace dtrain::strategy
