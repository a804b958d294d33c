// state_fingerprint (structure only, stable) and find_non_finite (the first
// NaN or infinity, in entry order).
#include "tensor/state_dict.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace dtrain {
namespace {

StateDict mlp(int64_t hidden) {
  StateDict d;
  d.insert("fc1.weight", Tensor::zeros({hidden, 4}));
  d.insert("fc1.bias", Tensor::zeros({hidden}));
  d.insert("fc2.weight", Tensor::zeros({2, hidden}));
  return d;
}

TEST(StateFingerprint, DependsOnNamesShapesAndOrderOnly) {
  const std::string base = state_fingerprint(mlp(8));
  EXPECT_EQ(base.size(), 16u);
  EXPECT_EQ(base.find_first_not_of("0123456789abcdef"), std::string::npos) << base;

  StateDict trained = mlp(8);
  trained.metadata()["step"] = "100";
  for (const auto& [name, t] : trained) t.span()[0] = 3.5f;
  EXPECT_EQ(state_fingerprint(trained), base) << "values and metadata do not count";

  EXPECT_NE(state_fingerprint(mlp(9)), base) << "a resized layer";
  StateDict renamed;
  renamed.insert("fc1.weight", Tensor::zeros({8, 4}));
  renamed.insert("fc1.b", Tensor::zeros({8}));
  renamed.insert("fc2.weight", Tensor::zeros({2, 8}));
  EXPECT_NE(state_fingerprint(renamed), base);
  StateDict reshaped;
  reshaped.insert("fc1.weight", Tensor::zeros({4, 8}));
  reshaped.insert("fc1.bias", Tensor::zeros({8}));
  reshaped.insert("fc2.weight", Tensor::zeros({2, 8}));
  EXPECT_NE(state_fingerprint(reshaped), base) << "a transposed weight";
  // Name and shape boundaries cannot run into each other.
  StateDict a, b;
  a.insert("w1", Tensor::zeros({1}));
  b.insert("w", Tensor::zeros({11}));
  EXPECT_NE(state_fingerprint(a), state_fingerprint(b));
}

// Stable across builds and platforms: a checkpoint written by one build is
// recognised by the next. Fixed values (FNV-1a 64 of the canonical text).
TEST(StateFingerprint, IsStable) {
  EXPECT_EQ(state_fingerprint(StateDict{}), "cbf29ce484222325");
  StateDict one;
  one.insert("b", Tensor::zeros({2}));
  EXPECT_EQ(state_fingerprint(one), state_fingerprint(one.clone()));
  EXPECT_EQ(state_fingerprint(one), "94e6231390fd7042");
}

TEST(FindNonFinite, FindsTheFirstNanOrInfinityInEntryOrder) {
  StateDict d = mlp(3);
  EXPECT_FALSE(find_non_finite(d).has_value());
  d.at("fc2.weight").span()[4] = std::numeric_limits<float>::quiet_NaN();
  d.at("fc1.bias").span()[2] = -std::numeric_limits<float>::infinity();
  const auto found = find_non_finite(d);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->name, "fc1.bias");
  EXPECT_EQ(found->index, 2);
  EXPECT_TRUE(std::isinf(found->value) && found->value < 0);
  d.at("fc1.bias").span()[2] = std::numeric_limits<float>::max();  // large but finite
  EXPECT_EQ(find_non_finite(d)->name, "fc2.weight");
  EXPECT_EQ(find_non_finite(d)->index, 4);
  EXPECT_TRUE(std::isnan(find_non_finite(d)->value));
  EXPECT_FALSE(find_non_finite(StateDict{}).has_value());
}

}  // namespace
}  // namespace dtrain
