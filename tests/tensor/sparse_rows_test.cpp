#include "tensor/sparse_rows.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace dtrain {
namespace {

TEST(SparseRows, CoalesceSumsDuplicatesAndSorts) {
  SparseRows rows;
  rows.indices = {4, 1, 4, 0};
  rows.values = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8}, {4, 2});
  rows.num_rows = 5;
  rows.coalesce();
  EXPECT_EQ(rows.indices, (std::vector<int64_t>{0, 1, 4}));
  EXPECT_EQ(rows.values.shape(), (Shape{3, 2}));
  EXPECT_EQ(rows.values.to_vector(), (std::vector<float>{7, 8, 3, 4, 6, 8}));
}

TEST(SparseRows, AddToScalesIntoTheTouchedRows) {
  SparseRows rows;
  rows.indices = {2, 0, 2};
  rows.values = Tensor::from_vector({1, 1, 2, 2, 3, 3}, {3, 2});
  rows.num_rows = 3;
  Tensor dense = Tensor::ones({3, 2});
  rows.add_to(dense, 0.5f);
  EXPECT_EQ(dense.to_vector(), (std::vector<float>{2, 2, 1, 1, 3, 3}));
}

TEST(SparseRows, RejectsRowsOutOfRangeAndMismatchedShapes) {
  SparseRows rows;
  rows.indices = {3};
  rows.values = Tensor::ones({1, 2});
  rows.num_rows = 3;
  EXPECT_THROW(rows.coalesce(), UsageError);
  EXPECT_THROW(rows.add_to(Tensor::zeros({3, 2})), UsageError);
  rows.indices = {0};
  EXPECT_THROW(rows.add_to(Tensor::zeros({4, 2})), UsageError);
  EXPECT_THROW(rows.add_to(Tensor::zeros({3, 3})), UsageError);
  rows.values = Tensor::ones({2, 2});
  EXPECT_THROW(rows.coalesce(), UsageError);
  SparseRows empty;
  empty.num_rows = 2;
  empty.coalesce();
  empty.add_to(Tensor::zeros({2, 1}));
  EXPECT_TRUE(empty.indices.empty());
}

}  // namespace
}  // namespace dtrain
