// AllReduceStrategy's update bucket by bucket (AllReduceOptions::
// overlap_update): bit-identical weights and optimizer state to one step
// after every bucket, for SGD with momentum and weight decay, Adam and AdamW,
// over 2 and 3 workers as threads over an InProcHub; and a non-finite
// gradient in the last bucket undoes the earlier buckets' steps, so
// NumericError leaves weights and optimizer state untouched, as the one-step
// path does.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "strategy/allreduce_strategy.h"
#include "strategy_test_util.h"

namespace dtrain::strategy {
namespace {

using test::Batch;
using test::make_batches;
using test::make_mlp;
using test::run_workers;
using test::snapshot;

OptimizerFactory optimizer_named(const std::string& name) {
  return [name](std::vector<Variable> params) -> std::unique_ptr<nn::Optimizer> {
    if (name == "adam") {
      return nn::Optimizer::make<optim::Adam>(std::move(params), optim::AdamOptions{.lr = 0.01f});
    }
    if (name == "adamw") {
      return nn::Optimizer::make<optim::AdamW>(std::move(params), optim::AdamW::defaults());
    }
    return nn::Optimizer::make<optim::Sgd>(
        std::move(params), optim::SgdOptions{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f});
  };
}

// Rows [begin, begin + rows) of `batch`.
Batch rows_of(const Batch& batch, int64_t begin, int64_t rows) {
  return {batch.x.narrow(begin, rows),
          std::vector<int64_t>(batch.y.begin() + begin, batch.y.begin() + begin + rows)};
}

// Worker `rank`'s uneven share of an 11-row batch (3 workers: one has none).
Batch share_of(const Batch& batch, int world, int rank) {
  const std::vector<int64_t> sizes =
      world == 2 ? std::vector<int64_t>{7, 4} : std::vector<int64_t>{5, 0, 6};
  int64_t begin = 0;
  for (int r = 0; r < rank; ++r) begin += sizes[static_cast<size_t>(r)];
  return rows_of(batch, begin, sizes[static_cast<size_t>(rank)]);
}

// The optimizer state's tensors (bits) and scalars, in a comparable form.
struct OptimizerState {
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::vector<float>> tensors;
  bool operator==(const OptimizerState&) const = default;
};

OptimizerState state_of(AllReduceStrategy& strategy) {
  const StateDict dict = strategy.optimizer_state();
  OptimizerState state{{dict.metadata().begin(), dict.metadata().end()}, {}};
  for (const auto& [name, tensor] : dict) state.tensors[name] = tensor.to_vector();
  return state;
}

// Bitwise equality (NaN-free values: == on floats would also do, but -0 and
// +0 must differ too).
bool same_bits(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].size() != b[i].size() ||
        std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0) {
      return false;
    }
  }
  return true;
}

struct Trained {
  std::vector<std::vector<float>> params;
  OptimizerState state;
};

struct EquivalenceCase {
  std::string optimizer;
  int world;
  int64_t accumulation_steps;
};

class OverlappedUpdate : public ::testing::TestWithParam<EquivalenceCase> {};

TEST_P(OverlappedUpdate, IsBitIdenticalToOneStepAfterEveryBucket) {
  const auto& [optimizer, world, accumulation] = GetParam();
  const std::vector<Batch> batches = make_batches(6, 11, 41);
  std::vector<Trained> results;  // [overlap off, overlap on]
  for (const bool overlap : {false, true}) {
    std::vector<Trained> ranks(static_cast<size_t>(world));
    run_workers(world, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
      AllReduceOptions options;
      options.bucket_bytes = 0;  // four buckets: fc2.bias, fc2.weight, fc1.bias, fc1.weight
      options.accumulation_steps = accumulation;
      options.overlap_update = overlap;
      AllReduceStrategy strategy(make_mlp(rank == 0 ? 1 : 7), optimizer_named(optimizer), comm,
                                 options);
      ASSERT_EQ(strategy.bucket_count(), 4u);
      for (const Batch& batch : batches) {
        const Batch mine = share_of(batch, world, rank);
        strategy.train_step(mine.x, mine.y);
        if (!strategy.updated()) continue;
        const OverlapStats& stats = strategy.overlap_stats();
        EXPECT_EQ(stats.update_by_bucket, overlap);
        EXPECT_EQ(stats.buckets_undone, 0);
        EXPECT_GT(stats.update_s, 0.0);
        EXPECT_GE(stats.update_hidden_share(), 0.0);
        EXPECT_LE(stats.update_hidden_share(), 1.0);
        if (!overlap) {
          EXPECT_EQ(stats.update_hidden_s, 0.0);
        }
      }
      EXPECT_EQ(strategy.updates(), static_cast<int64_t>(batches.size()) / accumulation);
      ranks[static_cast<size_t>(rank)] = {snapshot(strategy.model()), state_of(strategy)};
    });
    for (int r = 1; r < world; ++r) {
      EXPECT_TRUE(same_bits(ranks[static_cast<size_t>(r)].params, ranks[0].params)) << "rank " << r;
    }
    results.push_back(ranks[0]);
  }
  EXPECT_TRUE(same_bits(results[1].params, results[0].params));
  EXPECT_TRUE(results[1].state == results[0].state);
  EXPECT_FALSE(results[0].state.tensors.empty());  // the rule's buffers took part
}

INSTANTIATE_TEST_SUITE_P(
    Rules, OverlappedUpdate,
    ::testing::Values(EquivalenceCase{"sgd", 2, 1}, EquivalenceCase{"sgd", 3, 1},
                      EquivalenceCase{"adam", 2, 1}, EquivalenceCase{"adam", 3, 1},
                      EquivalenceCase{"adamw", 2, 1}, EquivalenceCase{"adamw", 3, 1},
                      EquivalenceCase{"sgd", 2, 2}),
    [](const ::testing::TestParamInfo<EquivalenceCase>& info) {
      return info.param.optimizer + std::to_string(info.param.world) + "Workers" +
             (info.param.accumulation_steps > 1 ? "Accumulating" : "");
    });

// A NaN in one input of rank 1: ReLU maps fc1's NaN outputs to 0 and masks
// their gradient, so the forward pass, the loss and every gradient but
// fc1.weight's (0 * NaN) stay finite. fc1.weight is the last bucket: the
// three earlier buckets are stepped, then undone.
TEST(OverlappedUpdateNonFinite, LastBucketUndoesTheEarlierStepsAndThrowsLikeOneStep) {
  for (const std::string optimizer : {"sgd", "adam"}) {
    SCOPED_TRACE(optimizer);
    const std::vector<Batch> batches = make_batches(2, 11, 43);
    std::vector<Trained> results;  // [clean run, run with poisoned steps]
    for (const bool poison : {false, true}) {
      Trained rank0;
      run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
        AllReduceOptions options;
        options.bucket_bytes = 0;
        AllReduceStrategy strategy(make_mlp(1), optimizer_named(optimizer), comm, options);
        const auto poisoned_step = [&](const Batch& batch) {
          Batch mine = share_of(batch, 2, rank);
          if (rank == 1) {
            mine.x = mine.x.clone();
            mine.x.data()[0] = NAN;
          }
          const auto params_before = snapshot(strategy.model());
          const OptimizerState state_before = state_of(strategy);
          try {
            strategy.train_step(mine.x, mine.y);
            ADD_FAILURE() << "rank " << rank << ": no NumericError";
          } catch (const NumericError& e) {
            EXPECT_NE(std::string(e.what()).find("fc1.weight"), std::string::npos) << e.what();
          }
          EXPECT_TRUE(strategy.overlap_stats().update_by_bucket);
          EXPECT_EQ(strategy.overlap_stats().buckets_undone, 3);
          EXPECT_FALSE(strategy.updated());
          EXPECT_FALSE(strategy.failed());
          EXPECT_TRUE(same_bits(snapshot(strategy.model()), params_before));
          EXPECT_TRUE(state_of(strategy) == state_before);
        };
        for (const Batch& batch : batches) {
          // Before the first step no optimizer buffer exists yet; before the
          // second, they do: undo must restore both.
          if (poison) poisoned_step(batch);
          const Batch mine = share_of(batch, 2, rank);
          strategy.train_step(mine.x, mine.y);
          EXPECT_TRUE(strategy.updated());
        }
        EXPECT_EQ(strategy.updates(), 2);
        if (rank == 0) rank0 = {snapshot(strategy.model()), state_of(strategy)};
      });
      results.push_back(rank0);
    }
    // The undone steps left no trace: step counts (Adam's bias correction),
    // buffers and weights continue as if they never happened.
    EXPECT_TRUE(same_bits(results[1].params, results[0].params));
    EXPECT_TRUE(results[1].state == results[0].state);
  }
}

}  // namespace
}  // namespace dtrain::strategy
