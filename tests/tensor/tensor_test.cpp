#include "tensor/tensor.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "tensor/state_dict.h"

namespace dtrain {
namespace {

TEST(Tensor, FactoriesAndViews) {
  Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.size(-1), 3);
  EXPECT_EQ(t.at({1, 2}), 6.0f);
  Tensor v = t.reshape({3, -1});
  EXPECT_EQ(v.shape(), (Shape{3, 2}));
  EXPECT_TRUE(v.same_storage(t));
  v.data()[0] = 9;
  EXPECT_EQ(t.at({0, 0}), 9.0f);
  Tensor row = t.narrow(1, 1);
  EXPECT_EQ(row.shape(), (Shape{1, 3}));
  EXPECT_EQ(row.data()[0], 4.0f);
  Tensor c = t.clone();
  c.fill(0);
  EXPECT_EQ(t.at({0, 1}), 2.0f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(Tensor::empty({3}).data()) % 64, 0u);
}

TEST(Tensor, ShapeErrorsNameBothShapes) {
  Tensor t = Tensor::zeros({2, 3});
  try {
    t.reshape({4, 2});
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "reshape: cannot view (2, 3) as (4, 2)");
  }
  EXPECT_THROW(t.narrow(1, 2), UsageError);
  EXPECT_THROW(t.item(), UsageError);
  EXPECT_THROW(Tensor::from_vector({1, 2}, {3}), UsageError);
}

TEST(Tensor, ReusedLargeStorageIsAlignedAndIndependent) {
  // Large blocks are recycled per thread: a new tensor of the same size may
  // reuse freed storage but never aliases a live one.
  Tensor a = Tensor::full({100000}, 1.0f);
  { Tensor dead = Tensor::full({100000}, 2.0f); }
  Tensor b = Tensor::full({100000}, 3.0f);
  EXPECT_FALSE(a.same_storage(b));
  EXPECT_NE(a.data(), b.data());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
  EXPECT_EQ(a.data()[99999], 1.0f);
  EXPECT_EQ(b.data()[0], 3.0f);
}

TEST(StateDict, KeepsOrderAndPrefixes) {
  StateDict a;
  a.insert("w", Tensor::ones({2}));
  a.insert("b", Tensor::zeros({1}));
  a.metadata()["step"] = "3";
  EXPECT_THROW(a.insert("w", Tensor::ones({1})), UsageError);
  StateDict all;
  all.merge(a, "model.");
  EXPECT_EQ(all.entries()[0].first, "model.w");
  EXPECT_EQ(all.metadata().at("model.step"), "3");
  StateDict back = all.sub("model.");
  EXPECT_EQ(back.entries()[1].first, "b");
  StateDict copy = a.clone();
  copy.at("w").fill(5);
  EXPECT_EQ(a.at("w").data()[0], 1.0f);
}

}  // namespace
}  // namespace dtrain
