#include "train/model_builder.h"

#include <gtest/gtest.h>

#include <set>

#include "autograd/functions.h"
#include "core/error.h"
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

}  // namespace
}  // namespace dtrain::train
