#include "train/model_builder.h"

#include <gtest/gtest.h>

#include <set>

#include "autograd/functions.h"
#include "core/error.h"
#include "nn/linear.h"
#include "testing/expect_error.h"
#include "train_test_util.h"

namespace dtrain::train {
namespace {

using test_util::layer;

// ids [4] -> embedding 10 x 3 -> [4, 3] -> flatten [12] -> linear 2.
ModelConfig embedding_mlp() {
  ModelConfig m;
  m.input_shape = {4};
  LayerConfig emb = layer("embedding", "emb");
  emb.num_embeddings = 10;
  emb.embedding_dim = 3;
  emb.line = 7;
  LayerConfig out = layer("linear", "out");
  out.out_features = 2;
  m.layers = {emb, layer("flatten", "flat"), out};
  return m;
}

TEST(ModelBuilder, EmbeddingLayerMapsIdsToRowsWithRowSparseGradients) {
  Rng rng(1);
  auto model = build_model(embedding_mlp(), rng);
  EXPECT_EQ(model->output_shape({5, 4}), (Shape{5, 2}));
  const auto named = model->named_parameters();
  ASSERT_EQ(named.size(), 3u);
  EXPECT_EQ(named[0].first, "emb.weight");
  EXPECT_EQ(named[0].second.shape(), (Shape{10, 3}));
  EXPECT_EQ(named[1].second.shape(), (Shape{2, 12}));

  // Two samples touching rows {0, 3, 9, 2} and {3, 3, 5, 1}.
  const Tensor ids = Tensor::from_vector({0, 3, 9, 2, 3, 3, 5, 1}, {2, 4});
  const Variable logits = model->forward(Variable(ids));
  EXPECT_EQ(logits.shape(), (Shape{2, 2}));
  const std::vector<int64_t> labels{0, 1};
  cross_entropy(logits, labels).backward();
  const SparseRows* rows = named[0].second.sparse_grad();
  ASSERT_NE(rows, nullptr) << "the embedding's gradient is row-sparse";
  const std::set<int64_t> touched(rows->indices.begin(), rows->indices.end());
  EXPECT_EQ(touched, (std::set<int64_t>{0, 1, 2, 3, 5, 9}));
  EXPECT_TRUE(named[1].second.grad().defined());

  // The same seed builds the same table.
  Rng again(1);
  EXPECT_EQ(build_model(embedding_mlp(), again)->named_parameters()[0].second.data().to_vector(),
            named[0].second.data().to_vector());
}

TEST(ModelBuilder, EmbeddingNeedsItsSizesAndIdsInRange) {
  Rng rng(1);
  ModelConfig m = embedding_mlp();
  m.layers[0].num_embeddings = 0;
  testing::expect_error<ConfigError>([&] { build_model(m, rng, "ctr.toml"); },
                                     "ctr.toml:7: 'model.layers[0].num_embeddings': embedding "
                                     "'emb' needs a positive num_embeddings");
  m = embedding_mlp();
  m.layers[0].embedding_dim = 0;
  testing::expect_error<ConfigError>([&] { build_model(m, rng, "ctr.toml"); },
                                     "ctr.toml:7: 'model.layers[0].embedding_dim': embedding 'emb' "
                                     "needs a positive embedding_dim");

  // Without the flatten the linear layer gets (1, 4, 3) and says so.
  m = embedding_mlp();
  m.layers.erase(m.layers.begin() + 1);
  EXPECT_THROW(build_model(m, rng, "ctr.toml"), ConfigError);

  auto model = build_model(embedding_mlp(), rng);
  testing::expect_usage_error(
      [&] {
        model->forward(Variable(Tensor::from_vector({0, 1, 10, 2}, {1, 4})));
      },
      "embedding 'emb': index 10 at position 2 is out of range [0, 10)");
}

// Issue #18: out_features = 10000000000 ended in a bare std::bad_alloc
// (exit 1). Every layer's size is checked before anything is allocated, and
// the error names the layer's key and the bytes it would need.
TEST(ModelBuilder, AHugeLayerIsRefusedBeforeAnythingIsAllocated) {
  Rng rng(1);
  ModelConfig m;
  m.input_shape = {16};
  m.layers = {layer("linear", "fc1", 32), layer("linear", "fc2", 10'000'000'000)};
  m.layers[1].line = 9;
  testing::expect_error<ConfigError>(
      [&] { build_model(m, rng, "job.toml"); },
      "job.toml:9: 'model.layers[1].out_features': linear 'fc2' would have 330000000000 "
      "parameters for input (1, 32), needing 1320000000000 bytes; a model may take at most "
      "68719476736 bytes (64 GiB)");

  LayerConfig conv = layer("conv2d", "conv");
  conv.out_channels = int64_t{1} << 40;
  conv.kernel = 3;
  conv.line = 4;
  m.input_shape = {3, 8, 8};
  m.layers = {conv};
  testing::expect_error<ConfigError>(
      [&] { build_model(m, rng, "job.toml"); },
      "job.toml:4: 'model.layers[0].out_channels': conv2d 'conv' would have 30786325577728 "
      "parameters for input (1, 3, 8, 8), needing 123145302310912 bytes; a model may take at "
      "most 68719476736 bytes (64 GiB)");

  // Sizes whose product does not fit in 64 bits saturate instead of wrapping.
  LayerConfig emb = layer("embedding", "emb");
  emb.num_embeddings = int64_t{1} << 40;
  emb.embedding_dim = int64_t{1} << 40;
  m.input_shape = {4};
  m.layers = {emb};
  testing::expect_error<ConfigError>(
      [&] { build_model(m, rng, "job.toml"); },
      "job.toml: 'model.layers[0].num_embeddings': embedding 'emb' would have more than 2^64 "
      "parameters for input (1, 4), needing more than 2^64 bytes; a model may take at most "
      "68719476736 bytes (64 GiB)");
}

// The total is checked up front too: the first layer (32 GiB) is never
// allocated when the second would take the model past the limit.
TEST(ModelBuilder, LayersThatTogetherExceedTheLimitAreRefused) {
  Rng rng(1);
  ModelConfig m;
  m.input_shape = {1 << 16};
  m.layers = {layer("linear", "a", 1 << 17), layer("relu", "act"), layer("linear", "b", 1 << 16)};
  m.layers[0].bias = false;  // 2^33 parameters: 32 GiB, within the limit alone
  testing::expect_error<ConfigError>(
      [&] { build_model(m, rng, "job.toml"); },
      "job.toml: 'model.layers[2].out_features': with linear 'b' the model's parameters would "
      "need 68719738880 bytes; a model may take at most 68719476736 bytes (64 GiB)");
}

// The size pass draws nothing from the job's Rng: the same seed gives the
// same weights as before it existed (dropout splits its Rng when built).
TEST(ModelBuilder, TheSizeCheckLeavesTheWeightsUnchanged) {
  ModelConfig m;
  m.input_shape = {6};
  m.layers = {layer("linear", "fc1", 5), layer("dropout", "drop"), layer("linear", "fc2", 3)};
  Rng rng(7);
  auto model = build_model(m, rng);
  Rng expected_rng(7);
  nn::Linear fc1(6, 5, expected_rng, true);
  EXPECT_EQ(model->named_parameters()[0].second.data().to_vector(),
            fc1.named_parameters()[0].second.data().to_vector());
  (void)expected_rng.split();  // what the dropout layer draws
  nn::Linear fc2(5, 3, expected_rng, true);
  EXPECT_EQ(model->named_parameters()[2].second.data().to_vector(),
            fc2.named_parameters()[0].second.data().to_vector());
}

// A sample whose input or a layer's output alone would exceed the limit is
// refused too (the first batch would need it for every sample).
TEST(ModelBuilder, HugeSamplesAreRefused) {
  Rng rng(1);
  ModelConfig m;
  m.input_shape = {int64_t{1} << 40};
  m.layers = {layer("relu", "act")};
  testing::expect_error<ConfigError>(
      [&] { build_model(m, rng, "job.toml"); },
      "job.toml: 'model.input_shape': the input (1, 1099511627776) would need 4398046511104 "
      "bytes per sample; at most 68719476736 bytes (64 GiB) are allowed");

  LayerConfig conv = layer("conv2d", "wide");
  conv.out_channels = 8;
  conv.kernel = 1;
  conv.line = 3;
  m.input_shape = {1, 65536, 65536};
  m.layers = {conv};
  testing::expect_error<ConfigError>(
      [&] { build_model(m, rng, "job.toml"); },
      "job.toml:3: 'model.layers[0]': the output of conv2d 'wide' (1, 8, 65536, 65536) would "
      "need 137438953472 bytes per sample; at most 68719476736 bytes (64 GiB) are allowed");
}

}  // namespace
}  // namespace dtrain::train
