// balanced_class_weights: N / (C n_c), weight 0 for an absent class, every
// class's total weight N / C; bad labels rejected.
#include "data/class_weights.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace dtrain::data {
namespace {

TEST(BalancedClassWeights, AreNOverCTimesTheClassCount) {
  const std::vector<int64_t> labels = {0, 0, 0, 1, 0, 1, 3, 0};  // 5, 2, 0, 1 of 8
  const std::vector<float> w = balanced_class_weights(labels, 4);
  ASSERT_EQ(w.size(), 4u);
  EXPECT_FLOAT_EQ(w[0], 8.0f / (4.0f * 5.0f));
  EXPECT_FLOAT_EQ(w[1], 8.0f / (4.0f * 2.0f));
  EXPECT_FLOAT_EQ(w[2], 0.0f);  // no sample of class 2
  EXPECT_FLOAT_EQ(w[3], 8.0f / (4.0f * 1.0f));
  // Every present class weighs N / C in total; the mean weight per sample
  // is (present classes) / C.
  EXPECT_FLOAT_EQ(5 * w[0], 2.0f);
  EXPECT_FLOAT_EQ(2 * w[1], 2.0f);
  EXPECT_EQ(balanced_class_weights(std::vector<int64_t>{}, 2), (std::vector<float>{0.0f, 0.0f}));
}

TEST(BalancedClassWeights, RejectsLabelsOutsideTheClasses) {
  EXPECT_THROW(balanced_class_weights(std::vector<int64_t>{0, 2}, 2), UsageError);
  EXPECT_THROW(balanced_class_weights(std::vector<int64_t>{-1}, 2), UsageError);
  EXPECT_THROW(balanced_class_weights(std::vector<int64_t>{0}, 0), UsageError);
}

// Issue #18: 2^40 classes ended in std::bad_alloc; the count is refused
// before anything is allocated.
TEST(BalancedClassWeights, RefusesMoreThanMaxClasses) {
  try {
    balanced_class_weights(std::vector<int64_t>{0}, int64_t{1} << 40);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()),
              "balanced class weights: 1099511627776 classes is outside [1, 1048576]");
  }
  EXPECT_EQ(balanced_class_weights(std::vector<int64_t>{0}, kMaxClasses).size(),
            static_cast<size_t>(kMaxClasses));
}

}  // namespace
}  // namespace dtrain::data
