// Strategy::step_on_gradients: the caller's gradients summed over the
// workers (threads over an InProcHub), scaled, one update; compared with the
// sum computed by hand. LocalStrategy as the one-process case; refusals.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "optim/sgd.h"
#include "strategy/allreduce_strategy.h"
#include "strategy/local_strategy.h"
#include "strategy/mirrored_strategy.h"
#include "strategy_test_util.h"

namespace dtrain::strategy {
namespace {

using test::make_mlp;
using test::run_workers;
using test::snapshot;

// Plain SGD with lr 1: an update subtracts the gradient itself.
OptimizerFactory plain_sgd() {
  return [](std::vector<Variable> params) {
    optim::SgdOptions o;
    o.lr = 1.0f;
    return nn::Optimizer::make<optim::Sgd>(std::move(params), o);
  };
}

// Rank r's gradient of element k of parameter p: distinct per rank, element
// and parameter, exact in float.
float contribution(int rank, size_t param, size_t k) {
  return static_cast<float>(rank + 1) * 0.25f + static_cast<float>(param) -
         static_cast<float>(k % 7) * 0.125f;
}

// Fills this rank's gradients; rank 1 leaves fc1's bias (parameter 1)
// without one (it counts as zeros). Stats: `rank + 2` samples.
StepStats fill(nn::Module& model, int rank) {
  std::vector<Variable> params = model.parameters();
  for (size_t p = 0; p < params.size(); ++p) {
    if (rank == 1 && p == 1) continue;
    Tensor g = Tensor::empty(params[p].shape());
    for (size_t k = 0; k < g.span().size(); ++k) g.span()[k] = contribution(rank, p, k);
    params[p].set_grad(g);
  }
  return {0.5 * (rank + 1), rank, rank + 2};
}

// Parameters after one step from `before` on the hand-computed sum.
std::vector<std::vector<float>> expected(const std::vector<std::vector<float>>& before, int world,
                                         float scale) {
  std::vector<std::vector<float>> out = before;
  for (size_t p = 0; p < out.size(); ++p) {
    for (size_t k = 0; k < out[p].size(); ++k) {
      float sum = 0.0f;
      for (int r = 0; r < world; ++r) {
        if (!(r == 1 && p == 1)) sum += contribution(r, p, k);
      }
      out[p][k] -= sum * scale;
    }
  }
  return out;
}

class StepOnGradients : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(StepOnGradients, SumsEveryWorkersGradientsAndStatistics) {
  const auto [world, overlapping] = GetParam();
  constexpr float kScale = 0.0625f;
  std::vector<std::vector<std::vector<float>>> after(static_cast<size_t>(world));
  std::vector<std::vector<float>> before;
  run_workers(world, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions o;
    o.bucket_bytes = 256;  // several buckets
    auto strategy = overlapping
                        ? std::make_unique<AllReduceStrategy>(make_mlp(3), plain_sgd(), comm, o)
                        : std::make_unique<AllReduceStrategy>(
                              make_mlp(3), plain_sgd(), static_cast<comm::Collectives&>(comm), o);
    if (rank == 0) before = snapshot(strategy->model());
    const StepStats mine =
        strategy->step_on_gradients([&] { return fill(strategy->model(), rank); }, kScale);
    EXPECT_EQ(mine.samples, rank + 2);
    const StepStats total = strategy->step_totals(mine);
    int64_t samples = 0, correct = 0;
    double loss = 0.0;
    for (int r = 0; r < world; ++r) samples += r + 2, correct += r, loss += 0.5 * (r + 1);
    EXPECT_EQ(total.samples, samples);
    EXPECT_EQ(total.correct, correct);
    EXPECT_DOUBLE_EQ(total.loss_sum, loss);
    EXPECT_TRUE(strategy->updated());
    after[static_cast<size_t>(rank)] = snapshot(strategy->model());
  });
  const auto want = expected(before, world, kScale);
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(after[static_cast<size_t>(r)], want) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(WorldsAndModes, StepOnGradients,
                         ::testing::Combine(::testing::Values(1, 2, 3), ::testing::Bool()));

TEST(StepOnGradientsAllReduce, AnUpdateHappensWhenNoWorkerHasSamples) {
  run_workers(2, [&](int /*rank*/, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceStrategy strategy(make_mlp(3), plain_sgd(), comm);
    const auto before = snapshot(strategy.model());
    const StepStats mine = strategy.step_on_gradients(
        [&] {
          for (Variable& p : strategy.model().parameters()) {
            Tensor g = Tensor::zeros(p.shape());
            g.span()[0] = 1.0f;
            p.set_grad(g);
          }
          return StepStats{};
        },
        1.0f);
    EXPECT_EQ(strategy.step_totals(mine).samples, 0);
    const auto after = snapshot(strategy.model());
    for (size_t p = 0; p < after.size(); ++p) EXPECT_EQ(after[p][0], before[p][0] - 2.0f);
  });
}

TEST(StepOnGradientsLocal, ScalesTheCallersGradientAndSteps) {
  LocalStrategy strategy(make_mlp(3), plain_sgd());
  EXPECT_TRUE(strategy.sums_gradients());
  const auto before = snapshot(strategy.model());
  const StepStats stats =
      strategy.step_on_gradients([&] { return fill(strategy.model(), 0); }, 0.5f);
  EXPECT_EQ(stats.samples, 2);
  EXPECT_EQ(snapshot(strategy.model()), expected(before, 1, 0.5f));
}

TEST(StepOnGradientsLocal, NonFiniteSumIsANumericError) {
  LocalStrategy strategy(make_mlp(3), plain_sgd());
  EXPECT_THROW(strategy.step_on_gradients(
                   [&] {
                     strategy.model().parameters()[0].dense_grad().span()[0] = 1e30f;
                     return StepStats{};
                   },
                   1e30f),
               NumericError);
}

TEST(StepOnGradientsRefusals, StrategiesThatDoNotSumAndAllReduceOptionsThatDoNotCombine) {
  MirroredStrategy mirrored(
      make_mlp(3), [] { return make_mlp(4); }, 2, plain_sgd());
  EXPECT_FALSE(mirrored.sums_gradients());
  try {
    mirrored.step_on_gradients([] { return StepStats{}; }, 1.0f);
    FAIL() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("'mirrored'"), std::string::npos) << e.what();
  }
  run_workers(1, [&](int /*rank*/, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions accumulating;
    accumulating.accumulation_steps = 2;
    AllReduceOptions dynamic;
    dynamic.dynamic_batch.enabled = true;
    for (const AllReduceOptions& o : {accumulating, dynamic}) {
      AllReduceStrategy strategy(make_mlp(3), plain_sgd(), comm, o);
      EXPECT_TRUE(strategy.sums_gradients());
      bool called = false;
      EXPECT_THROW(strategy.step_on_gradients(
                       [&] {
                         called = true;
                         return StepStats{};
                       },
                       1.0f),
                   UsageError);
      EXPECT_FALSE(called);
      EXPECT_FALSE(strategy.failed());
    }
  });
}

}  // namespace
}  // namespace dtrain::strategy
