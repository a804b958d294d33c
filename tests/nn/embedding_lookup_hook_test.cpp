// Embedding's lookup hook: called with the batch's indices before the table
// is read, so a strategy can fill those rows first.
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "nn/embedding.h"

namespace dtrain::nn {
namespace {

TEST(EmbeddingLookupHook, SeesTheIndicesBeforeTheLookupAndCanFillTheRows) {
  Rng rng(4);
  Embedding emb(6, 2, rng);
  std::vector<int64_t> seen;
  // The hook writes row r := (10 r, 10 r + 1); the lookup must read that.
  emb.set_lookup_hook([&](std::span<const int64_t> indices) {
    seen.assign(indices.begin(), indices.end());
    float* table = emb.weight().data().data();
    for (int64_t r : indices) {
      table[r * 2] = 10.0f * float(r);
      table[r * 2 + 1] = 10.0f * float(r) + 1.0f;
    }
  });
  const std::vector<int64_t> indices = {3, 1, 3};
  const Variable out = emb.forward_indices(indices);
  EXPECT_EQ(seen, indices);
  const std::vector<float> expected = {30, 31, 10, 11, 30, 31};
  ASSERT_EQ(out.numel(), 6);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(out.data().data()[i], expected[size_t(i)]) << i;

  // forward() over integer-valued floats calls it too, with the same order.
  Tensor input = Tensor::empty({2});
  input.data()[0] = 5.0f;
  input.data()[1] = 0.0f;
  emb.forward(Variable(input));
  EXPECT_EQ(seen, (std::vector<int64_t>{5, 0}));

  // Removed: the table is read as it stands.
  emb.set_lookup_hook({});
  emb.weight().data().data()[2] = -7.0f;
  EXPECT_EQ(emb.forward_indices(std::vector<int64_t>{1}).data().data()[0], -7.0f);
  EXPECT_EQ(seen, (std::vector<int64_t>{5, 0}));
}

TEST(EmbeddingLookupHook, IsNotCalledForOutOfRangeIndicesAndItsErrorsPropagate) {
  Rng rng(4);
  Embedding emb(3, 2, rng);
  int calls = 0;
  emb.set_lookup_hook([&](std::span<const int64_t>) {
    ++calls;
    throw std::runtime_error("rows unavailable");
  });
  EXPECT_THROW(emb.forward_indices(std::vector<int64_t>{3}), UsageError);
  EXPECT_EQ(calls, 0);
  EXPECT_THROW(emb.forward_indices(std::vector<int64_t>{2}), std::runtime_error);
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace dtrain::nn
