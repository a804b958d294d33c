#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "optim/sgd.h"
#include "strategy/local_strategy.h"
#include "strategy/mirrored_strategy.h"
#include "strategy_test_util.h"

namespace dtrain::strategy {
namespace {

using test::Batch;
using test::make_batches;
using test::make_mlp;
using test::sgd;

double max_relative_difference(nn::Module& a, nn::Module& b) {
  return test::max_relative_difference(test::snapshot(a), test::snapshot(b));
}

class MirroredEquivalence : public ::testing::TestWithParam<int64_t> {};

TEST_P(MirroredEquivalence, MatchesOneWorkerOnTheGlobalBatch) {
  const int64_t replicas = GetParam();
  LocalStrategy local(make_mlp(1), sgd());
  MirroredStrategy mirrored(
      make_mlp(1), [] { return make_mlp(99); }, replicas, sgd());
  for (const Batch& batch : make_batches(4, 11, 5)) {  // 11 rows: uneven slices
    const StepStats a = local.train_step(batch.x, batch.y);
    const StepStats b = mirrored.train_step(batch.x, batch.y);
    EXPECT_EQ(a.samples, b.samples);
    EXPECT_EQ(a.correct, b.correct);
    EXPECT_NEAR(a.loss_sum, b.loss_sum, 1e-4 * std::abs(a.loss_sum));
  }
  EXPECT_LT(max_relative_difference(local.model(), mirrored.model()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Replicas, MirroredEquivalence, ::testing::Values(1, 2, 3, 4));

TEST(Mirrored, MoreReplicasThanRowsStillMatches) {
  LocalStrategy local(make_mlp(2), sgd());
  MirroredStrategy mirrored(
      make_mlp(2), [] { return make_mlp(3); }, 4, sgd());
  for (const Batch& batch : make_batches(3, 2, 8)) {
    local.train_step(batch.x, batch.y);
    mirrored.train_step(batch.x, batch.y);
  }
  EXPECT_LT(max_relative_difference(local.model(), mirrored.model()), 1e-5);
}

TEST(Mirrored, ReplicaErrorsReachTheCaller) {
  MirroredStrategy mirrored(
      make_mlp(1), [] { return make_mlp(1); }, 2, sgd());
  Tensor wrong = Tensor::zeros({4, 5});
  std::vector<int64_t> y{0, 1, 2, 0};
  EXPECT_THROW(mirrored.train_step(wrong, y), UsageError);
  // The strategy is still usable after a failed step.
  const Batch good = make_batches(1, 4, 1)[0];
  EXPECT_EQ(mirrored.train_step(good.x, good.y).samples, 4);
}

TEST(Strategy, RejectsMismatchedBatches) {
  LocalStrategy local(make_mlp(1), sgd());
  std::vector<int64_t> y{0, 1};
  EXPECT_THROW(local.train_step(Tensor::zeros({3, 6}), y), UsageError);
}

TEST(Strategy, CountCorrectUsesArgMax) {
  Tensor out = Tensor::from_vector({0.1f, 0.9f, 0.0f, 2.0f, 1.0f, 0.0f}, {2, 3});
  std::vector<int64_t> y{1, 2};
  EXPECT_EQ(count_correct(out, y), 1);
}

}  // namespace
}  // namespace dtrain::strategy
