// Dynamic batch sizing in AllReduceStrategy, workers as threads over an
// InProcHub: under unequal (and changing) shares the replicas stay identical
// and match one worker on the global batch; every worker observes every
// worker's rows and seconds through bucket 0's header and computes the same
// split.
#include <gtest/gtest.h>

#include <cmath>
#include <exception>
#include <functional>
#include <numeric>
#include <thread>

#include "comm/collectives/communicator.h"
#include "comm/transport/inproc_transport.h"
#include "core/error.h"
#include "strategy/allreduce_strategy.h"
#include "strategy/local_strategy.h"
#include "strategy_test_util.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;
using test::Batch;
using test::make_batches;
using test::make_mlp;
using test::sgd;

using test::max_relative_difference;
using test::snapshot;

void run_workers(int world, const std::function<void(int, comm::Communicator&)>& body) {
  comm::InProcHub hub(world);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        try {
          auto transport = hub.transport(r);
          comm::CommunicatorOptions o;
          o.timeout = 60s;  // generous: ASan on a loaded machine
          comm::Communicator comm(*transport, o);
          body(r, comm);
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    }
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

class DynamicBatchEquivalence : public ::testing::TestWithParam<int> {};

TEST_P(DynamicBatchEquivalence, UnequalChangingSharesMatchOneWorkerOnTheGlobalBatch) {
  const int world = GetParam();
  const int64_t rows = 23;
  const std::vector<Batch> batches = make_batches(6, rows, 9);
  LocalStrategy local(make_mlp(1), sgd());
  for (const Batch& b : batches) local.train_step(b.x, b.y);
  const auto expected = snapshot(local.model());

  std::vector<std::vector<std::vector<float>>> params(static_cast<size_t>(world));
  std::vector<std::vector<std::vector<int64_t>>> splits(static_cast<size_t>(world));
  std::vector<std::vector<WorkerCostModel>> models(static_cast<size_t>(world));
  run_workers(world, [&](int rank, comm::Communicator& comm) {
    AllReduceOptions options;
    options.bucket_bytes = 256;  // several buckets: the header rides in bucket 0 only
    options.dynamic_batch.enabled = true;
    options.dynamic_batch.rebalance_every = 2;
    options.dynamic_batch.smoothing = 0.0;
    auto model = make_mlp(rank == 0 ? 1 : 50 + static_cast<uint64_t>(rank));
    AllReduceStrategy strategy(std::move(model), sgd(), comm, options);
    // Forced unequal shares to start with (the same on every worker); the
    // balancer then re-balances from measured rates every two updates.
    std::vector<double> forced(static_cast<size_t>(world));
    std::iota(forced.begin(), forced.end(), 1.0);
    strategy.batch_balancer().set_shares(forced);
    for (const Batch& b : batches) {
      splits[static_cast<size_t>(rank)].push_back(strategy.batch_split(rows));
      const auto [lo, hi] = strategy.row_range(rows);
      const std::vector<int64_t> y(b.y.begin() + lo, b.y.begin() + hi);
      strategy.train_step(b.x.narrow(lo, hi - lo), y);
      EXPECT_EQ(strategy.global_stats().samples, rows);
    }
    EXPECT_EQ(strategy.batch_balancer().rebalances(), 3);
    params[static_cast<size_t>(rank)] = snapshot(strategy.model());
    models[static_cast<size_t>(rank)] = strategy.batch_balancer().models();
  });
  // The first split follows the forced shares 1 : 2 : ... : W.
  std::vector<int64_t> first = splits[0][0];
  EXPECT_LT(first.front(), first.back());
  EXPECT_EQ(std::accumulate(first.begin(), first.end(), int64_t{0}), rows);
  for (int r = 0; r < world; ++r) {
    const auto ur = static_cast<size_t>(r);
    EXPECT_EQ(splits[ur], splits[0]) << "rank " << r << " computed another split";
    ASSERT_EQ(models[ur].size(), static_cast<size_t>(world));
    for (size_t i = 0; i < models[ur].size(); ++i) {
      EXPECT_EQ(models[ur][i].fixed_s, models[0][i].fixed_s) << "rank " << r << ", worker " << i;
      EXPECT_EQ(models[ur][i].rows_per_s, models[0][i].rows_per_s)
          << "rank " << r << ", worker " << i;
      EXPECT_GT(models[ur][i].rows_per_s, 0.0) << "worker " << i << "'s times never arrived";
    }
    EXPECT_LT(max_relative_difference(expected, params[ur]), 1e-5) << "rank " << r;
    EXPECT_EQ(params[ur], params[0]) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Workers, DynamicBatchEquivalence, ::testing::Values(2, 3));

TEST(DynamicBatchOptions, HeaderGrowsByTwoFloatsPerWorker) {
  run_workers(3, [](int rank, comm::Communicator& comm) {
    AllReduceOptions off;
    AllReduceStrategy plain(make_mlp(1), sgd(), comm, off);
    AllReduceOptions on;
    on.dynamic_batch.enabled = true;
    AllReduceStrategy dynamic(make_mlp(1), sgd(), comm, on);
    EXPECT_EQ(dynamic.floats_per_update(), plain.floats_per_update() + 6);
    // Equal shares until something changes them: the static split.
    EXPECT_EQ(dynamic.row_range(10), plain.row_range(10));
    EXPECT_EQ(plain.row_range(10),
              (std::pair<int64_t, int64_t>{10 * rank / 3, 10 * (rank + 1) / 3}));
  });
}

}  // namespace
}  // namespace dtrain::strategy
