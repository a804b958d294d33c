// AllReduceStrategy: workers as threads over an InProcHub (equivalence with
// LocalStrategy on the global batch, bucket sizes, accumulation, overlap, a
// killed worker) and as two real processes over ZmqTransport.
#include "strategy/allreduce_strategy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <latch>
#include <thread>

#include "autograd/functions.h"
#include "comm/collectives/communicator.h"
#include "comm/rendezvous/rendezvous.h"
#include "comm/transport/inproc_transport.h"
#include "comm/transport/zmq_transport.h"
#include "core/crc32c.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/activation.h"
#include "nn/embedding.h"
#include "nn/flatten.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "optim/sgd.h"
#include "strategy/local_strategy.h"
#include "strategy_test_util.h"
#include "testing/process.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;

// ------------------------------------------------------------ helpers

using test::Batch;
using test::make_batches;
using test::make_mlp;
using test::sgd;

// Rows [begin, begin + rows) of a batch (possibly none).
Batch slice(const Batch& batch, int64_t begin, int64_t rows) {
  return {batch.x.narrow(begin, rows),
          std::vector<int64_t>(batch.y.begin() + begin, batch.y.begin() + begin + rows)};
}

// Worker r's rows of a global batch cut by `sizes` (summing to its rows).
Batch share(const Batch& batch, const std::vector<int64_t>& sizes, int rank) {
  int64_t begin = 0;
  for (int r = 0; r < rank; ++r) begin += sizes[static_cast<size_t>(r)];
  return slice(batch, begin, sizes[static_cast<size_t>(rank)]);
}

using test::max_relative_difference;
using test::snapshot;

using test::comm_options;
using test::run_workers;

// The parameters after LocalStrategy trained on each global batch once.
std::vector<std::vector<float>> local_reference(const std::vector<Batch>& batches) {
  LocalStrategy local(make_mlp(1), sgd());
  for (const Batch& b : batches) local.train_step(b.x, b.y);
  return snapshot(local.model());
}

std::vector<int64_t> cut(int world, int64_t rows) {
  switch (world) {
    case 1:
      return {rows};
    case 2:
      return {rows - rows / 3, rows / 3};
    case 3:
      return {rows / 2, 0, rows - rows / 2};
    default: {
      // 11 rows over 4: {4, 0, 5, 2}: uneven, and one worker without rows.
      std::vector<int64_t> sizes{rows / 3, 0, rows / 2, 0};
      sizes[3] = rows - sizes[0] - sizes[2];
      return sizes;
    }
  }
}

enum class Mode { kOverlapped, kBlocking };

std::unique_ptr<AllReduceStrategy> make_strategy(int rank, comm::Communicator& comm, Mode mode,
                                                 AllReduceOptions options) {
  // Every worker starts from other weights: rank 0's broadcast must align them.
  auto model = make_mlp(rank == 0 ? 1 : 100 + static_cast<uint64_t>(rank));
  if (mode == Mode::kBlocking) {
    return std::make_unique<AllReduceStrategy>(std::move(model), sgd(),
                                               static_cast<comm::Collectives&>(comm), options);
  }
  return std::make_unique<AllReduceStrategy>(std::move(model), sgd(), comm, options);
}

// ------------------------------------------------------------ equivalence

struct EquivalenceCase {
  int world;
  size_t bucket_bytes;
  Mode mode;
};

void PrintTo(const EquivalenceCase& c, std::ostream* os) {
  *os << c.world << " workers, " << c.bucket_bytes << " bucket bytes, "
      << (c.mode == Mode::kOverlapped ? "overlapped" : "blocking");
}

class AllReduceEquivalence : public ::testing::TestWithParam<EquivalenceCase> {};

TEST_P(AllReduceEquivalence, MatchesOneWorkerOnTheGlobalBatch) {
  const auto [world, bucket_bytes, mode] = GetParam();
  const std::vector<Batch> batches = make_batches(3, 11, 5);
  const auto expected = local_reference(batches);
  LocalStrategy local(make_mlp(1), sgd());
  std::vector<StepStats> local_stats;
  for (const Batch& b : batches) local_stats.push_back(local.train_step(b.x, b.y));

  const std::vector<int64_t> sizes = cut(world, 11);
  std::vector<std::vector<std::vector<float>>> params(static_cast<size_t>(world));
  run_workers(world, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.bucket_bytes = bucket_bytes;
    auto strategy = make_strategy(rank, comm, mode, options);
    for (size_t s = 0; s < batches.size(); ++s) {
      const Batch mine = share(batches[s], sizes, rank);
      const StepStats stats = strategy->train_step(mine.x, mine.y);
      EXPECT_EQ(stats.samples, sizes[static_cast<size_t>(rank)]);
      EXPECT_TRUE(strategy->updated());
      const StepStats& global = strategy->global_stats();
      EXPECT_EQ(global.samples, 11);
      EXPECT_EQ(global.correct, local_stats[s].correct);
      EXPECT_NEAR(global.loss_sum, local_stats[s].loss_sum,
                  1e-4 * std::abs(local_stats[s].loss_sum));
    }
    EXPECT_EQ(strategy->updates(), 3);
    params[static_cast<size_t>(rank)] = snapshot(strategy->model());
  });
  for (int r = 0; r < world; ++r) {
    EXPECT_LT(max_relative_difference(expected, params[static_cast<size_t>(r)]), 1e-5)
        << "rank " << r;
    // Same update on the same averaged gradient: the replicas are identical.
    EXPECT_EQ(params[static_cast<size_t>(r)], params[0]) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Workers, AllReduceEquivalence,
    ::testing::Values(
        EquivalenceCase{1, 256, Mode::kOverlapped}, EquivalenceCase{2, 256, Mode::kOverlapped},
        EquivalenceCase{4, 256, Mode::kOverlapped}, EquivalenceCase{3, 256, Mode::kOverlapped},
        EquivalenceCase{4, 0, Mode::kOverlapped},                // one parameter per bucket
        EquivalenceCase{4, size_t{1} << 30, Mode::kOverlapped},  // one bucket
        EquivalenceCase{2, 256, Mode::kBlocking}, EquivalenceCase{4, 0, Mode::kBlocking}),
    [](const ::testing::TestParamInfo<EquivalenceCase>& info) {
      const std::string buckets = info.param.bucket_bytes > (size_t{1} << 20)
                                      ? std::string("OneBucket")
                                      : fmt::format("{}Bytes", info.param.bucket_bytes);
      return fmt::format("{}Workers{}{}", info.param.world, buckets,
                         info.param.mode == Mode::kOverlapped ? "Overlapped" : "Blocking");
    });

TEST(AllReduceBuckets, TinyAndSingleBucketsGiveTheSameParameters) {
  const std::vector<Batch> batches = make_batches(3, 11, 9);
  std::vector<std::vector<std::vector<float>>> results;
  for (const size_t bytes : {size_t{0}, size_t{1} << 30}) {
    std::vector<std::vector<float>> rank0;
    size_t buckets = 0;
    run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
      AllReduceOptions options;
      options.bucket_bytes = bytes;
      auto strategy = make_strategy(rank, comm, Mode::kOverlapped, options);
      for (const Batch& b : batches) {
        const Batch mine = share(b, {6, 5}, rank);
        strategy->train_step(mine.x, mine.y);
      }
      if (rank == 0) {
        rank0 = snapshot(strategy->model());
        buckets = strategy->bucket_count();
      }
    });
    EXPECT_EQ(buckets, bytes == 0 ? 4u : 1u);
    results.push_back(rank0);
  }
  EXPECT_LT(max_relative_difference(results[0], results[1]), 1e-6);
}

// ------------------------------------------------------------ accumulation

TEST(AllReduceAccumulation, TwoMicroBatchesEqualOneStepOnBoth) {
  constexpr int64_t kMicro = 6;
  const std::vector<Batch> batches = make_batches(3, 2 * kMicro, 21);  // one per update
  const auto expected = local_reference(batches);
  std::vector<std::vector<std::vector<float>>> params(2);
  // Rank 1 starts its first micro-batch only after rank 0 finished its own:
  // had rank 0's first call communicated, it would have waited for rank 1
  // and failed by its deadline instead.
  std::latch rank0_accumulated(1);
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.bucket_bytes = 256;
    options.accumulation_steps = 2;
    auto strategy = make_strategy(rank, comm, Mode::kOverlapped, options);
    const std::vector<int64_t> sizes{4, 2};
    for (const Batch& b : batches) {
      const Batch first = share(slice(b, 0, kMicro), sizes, rank);
      const Batch second = share(slice(b, kMicro, kMicro), sizes, rank);
      if (rank == 1 && &b == &batches[0]) rank0_accumulated.wait();
      strategy->train_step(first.x, first.y);
      EXPECT_FALSE(strategy->updated());
      if (rank == 0 && &b == &batches[0]) rank0_accumulated.count_down();
      strategy->train_step(second.x, second.y);
      EXPECT_TRUE(strategy->updated());
      EXPECT_EQ(strategy->global_stats().samples, 2 * kMicro);  // both micro-batches, all workers
    }
    EXPECT_EQ(strategy->updates(), 3);
    params[static_cast<size_t>(rank)] = snapshot(strategy->model());
  });
  EXPECT_LT(max_relative_difference(expected, params[0]), 1e-5);
  EXPECT_EQ(params[0], params[1]);
}

// ------------------------------------------------------------ overlap and join

TEST(AllReduceOverlap, BucketsLaunchWhileBackwardRuns) {
  const Batch batch = make_batches(1, 8, 3)[0];
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.bucket_bytes = 0;  // four buckets
    auto strategy = make_strategy(rank, comm, Mode::kOverlapped, options);
    const Batch mine = share(batch, {8, 0}, rank);
    strategy->train_step(mine.x, mine.y);
    const OverlapStats& stats = strategy->overlap_stats();
    EXPECT_EQ(stats.buckets, 4);
    if (rank == 0) {
      // Every hook fires inside backward(), so every bucket left during it.
      EXPECT_EQ(stats.launched_in_backward, 4);
    } else {
      EXPECT_EQ(stats.launched_in_backward, 0);  // no rows: no backward, all launched after
    }
    EXPECT_GE(stats.hidden_share(), 0.0);
    EXPECT_LE(stats.hidden_share(), 1.0);
  });
}

TEST(AllReduceJoin, WorkersWithoutRowsNeverHangAndNobodyWithRowsSkipsTheUpdate) {
  const std::vector<Batch> batches = make_batches(2, 5, 17);
  std::vector<std::vector<std::vector<float>>> params(3);
  run_workers(3, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    auto strategy = make_strategy(rank, comm, Mode::kOverlapped, {});
    const auto before = snapshot(strategy->model());
    // Nobody has rows: every worker joins, nothing changes.
    const StepStats empty = strategy->train_step(Tensor(), {});
    EXPECT_EQ(empty.samples, 0);
    EXPECT_FALSE(strategy->updated());
    EXPECT_EQ(snapshot(strategy->model()), before);
    // Only rank 2 has rows.
    for (const Batch& b : batches) {
      const Batch mine = share(b, {0, 0, 5}, rank);
      strategy->train_step(mine.x, mine.y);
      EXPECT_TRUE(strategy->updated());
    }
    params[static_cast<size_t>(rank)] = snapshot(strategy->model());
  });
  EXPECT_LT(max_relative_difference(local_reference(batches), params[0]), 1e-5);
  EXPECT_EQ(params[0], params[2]);
}

TEST(AllReduceStrategyOptions, RejectsBadOptionsAndBatches) {
  run_workers(1, [](int, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions bad;
    bad.accumulation_steps = 0;
    EXPECT_THROW(AllReduceStrategy(make_mlp(1), sgd(), comm, bad), UsageError);
    AllReduceStrategy strategy(make_mlp(1), sgd(), comm);
    const std::vector<int64_t> y{0, 1};
    EXPECT_THROW(strategy.train_step(Tensor::zeros({3, 6}), y), UsageError);
    EXPECT_THROW(strategy.train_step(Tensor::zeros({3, 6}), {}), UsageError);
    // Still usable: a bad batch fails before anything changed.
    const Batch good = make_batches(1, 2, 4)[0];
    EXPECT_EQ(strategy.train_step(good.x, good.y).samples, 2);
    EXPECT_TRUE(strategy.updated());
  });
}

// ------------------------------------------------------------ unused and sparse

// Two heads over one body; forward uses only `used`, so `unused` never gets a
// gradient on any worker.
class TwoHeads : public nn::Module {
 public:
  explicit TwoHeads(uint64_t seed) : Module("two_heads") {
    Rng rng(seed);
    body_ = &register_module("body", std::make_unique<nn::Linear>(6, 8, rng));
    used_ = &register_module("used", std::make_unique<nn::Linear>(8, 3, rng));
    unused_ = &register_module("unused", std::make_unique<nn::Linear>(8, 3, rng));
  }
  Variable forward(const Variable& x) override { return used_->forward(relu(body_->forward(x))); }
  Shape output_shape(const Shape& input) const override {
    return used_->output_shape(body_->output_shape(input));
  }

 private:
  nn::Linear* body_;
  nn::Linear* used_;
  nn::Linear* unused_;
};

OptimizerFactory sgd_with_weight_decay() {
  return [](std::vector<Variable> params) {
    optim::SgdOptions o;
    o.lr = 0.1f;
    o.momentum = 0.9f;
    o.weight_decay = 0.05f;  // a zero gradient would still move the weights
    return nn::Optimizer::make<optim::Sgd>(std::move(params), o);
  };
}

TEST(AllReduceUnused, ParameterWithoutGradientAnywhereIsNotUpdated) {
  const std::vector<Batch> batches = make_batches(3, 9, 31);
  LocalStrategy local(std::make_unique<TwoHeads>(1), sgd_with_weight_decay());
  for (const Batch& b : batches) local.train_step(b.x, b.y);
  const auto expected = snapshot(local.model());
  const auto initial = snapshot(*std::make_unique<TwoHeads>(1));
  std::vector<std::vector<std::vector<float>>> params(2);
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.bucket_bytes = 0;
    AllReduceStrategy strategy(std::make_unique<TwoHeads>(rank == 0 ? 1 : 7),
                               sgd_with_weight_decay(), comm, options);
    for (const Batch& b : batches) {
      const Batch mine = share(b, {5, 4}, rank);
      strategy.train_step(mine.x, mine.y);
    }
    params[static_cast<size_t>(rank)] = snapshot(strategy.model());
  });
  EXPECT_LT(max_relative_difference(expected, params[0]), 1e-5);
  EXPECT_EQ(params[0], params[1]);
  // unused.weight and unused.bias: the last two parameters, as initialised.
  EXPECT_EQ(params[0][4], initial[4]);
  EXPECT_EQ(params[0][5], initial[5]);
}

std::unique_ptr<nn::Module> make_embedding_model(uint64_t seed) {
  Rng rng(seed);
  auto model = std::make_unique<nn::Sequential>();
  model->add("embed", std::make_unique<nn::Embedding>(10, 4, rng));  // row-sparse gradient
  model->add("flatten", std::make_unique<nn::Flatten>());
  model->add("fc", std::make_unique<nn::Linear>(8, 3, rng));
  return model;
}

TEST(AllReduceSparse, EmbeddingGradientsAreFoldedAndAveraged) {
  // Two token ids per row; each worker touches other rows of the table.
  Rng rng(41);
  std::vector<Batch> batches;
  for (int s = 0; s < 3; ++s) {
    Batch b{Tensor::empty({8, 2}), {}};
    for (float& v : b.x.span()) v = static_cast<float>(rng.below(10));
    for (int i = 0; i < 8; ++i) b.y.push_back(static_cast<int64_t>(rng.below(3)));
    batches.push_back(std::move(b));
  }
  LocalStrategy local(make_embedding_model(1), sgd());
  for (const Batch& b : batches) local.train_step(b.x, b.y);
  std::vector<std::vector<std::vector<float>>> params(2);
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceStrategy strategy(make_embedding_model(rank == 0 ? 1 : 2), sgd(), comm);
    for (const Batch& b : batches) {
      const Batch mine = share(b, {3, 5}, rank);
      strategy.train_step(mine.x, mine.y);
    }
    params[static_cast<size_t>(rank)] = snapshot(strategy.model());
  });
  EXPECT_LT(max_relative_difference(snapshot(local.model()), params[0]), 1e-5);
  EXPECT_EQ(params[0], params[1]);
}

// ------------------------------------------------------------ failures

TEST(AllReduceFailure, KilledWorkerMidStepIsNamedAndFailsTheStrategy) {
  const std::vector<Batch> batches = make_batches(2, 8, 6);
  std::vector<std::string> messages(2);
  std::vector<int> peers(2, -2);
  run_workers(
      2,
      [&](int rank, comm::Communicator& comm, comm::InProcHub& hub) {
        AllReduceOptions options;
        options.bucket_bytes = 0;
        options.timeout = 30s;  // longer than the communicator's: its error, naming the peer, wins
        int steps = 0;
        auto strategy = make_strategy(rank, comm, Mode::kOverlapped, options);
        if (rank == 1) {
          // Rank 1 dies inside its second backward, right after launching
          // bucket 0 (fc2.bias, the first gradient ready): buckets 1..3 are
          // launched after its death, so its peer cannot complete them.
          Variable last = strategy->model().parameters().back();
          last.register_grad_ready_hook([&](Variable&) {
            if (steps == 1) hub.kill(1);
          });
        }
        try {
          for (const Batch& b : batches) {
            const Batch mine = share(b, {4, 4}, rank);
            strategy->train_step(mine.x, mine.y);
            ++steps;
          }
          ADD_FAILURE() << "rank " << rank << " finished both steps";
        } catch (const CommError& e) {
          messages[static_cast<size_t>(rank)] = e.what();
          peers[static_cast<size_t>(rank)] = e.peer();
        }
        EXPECT_EQ(steps, 1) << "rank " << rank;
        EXPECT_TRUE(strategy->failed());
        try {
          const Batch mine = share(batches[0], {4, 4}, rank);
          strategy->train_step(mine.x, mine.y);
          ADD_FAILURE() << "a failed strategy trained";
        } catch (const CommError& e) {
          EXPECT_NE(std::string(e.what()).find("allreduce strategy failed earlier"),
                    std::string::npos)
              << e.what();
        }
      },
      5s);
  // The survivor's error comes from the communicator, not from a deadline.
  EXPECT_EQ(peers[0], 1) << messages[0];
  EXPECT_NE(messages[0].find("rank 1"), std::string::npos) << messages[0];
  EXPECT_NE(messages[0].find("allreduce"), std::string::npos) << messages[0];
  EXPECT_FALSE(messages[1].empty());
}

TEST(AllReduceFailure, OwnDeadlineNamesTheBucketAwaited) {
  const Batch batch = make_batches(1, 8, 2)[0];
  std::latch rank0_timed_out(1);
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceOptions options;
    options.bucket_bytes = 0;
    options.timeout = 100ms;  // far below the communicator's 20 s
    auto strategy = make_strategy(rank, comm, Mode::kOverlapped, options);
    const Batch mine = share(batch, {4, 4}, rank);
    if (rank == 1) {
      // Rank 1 is late (not dead): it joins the step only after rank 0 gave up.
      rank0_timed_out.wait();
      strategy->train_step(mine.x, mine.y);
      EXPECT_TRUE(strategy->updated());
      return;
    }
    try {
      strategy->train_step(mine.x, mine.y);
      ADD_FAILURE() << "rank 0 did not time out";
    } catch (const TimeoutError& e) {
      EXPECT_EQ(e.peer(), -1);
      EXPECT_EQ(e.operation(), "allreduce strategy: bucket 0 of 4") << e.what();
    }
    rank0_timed_out.count_down();
    EXPECT_TRUE(strategy->failed());
    EXPECT_THROW(strategy->train_step(mine.x, mine.y), CommError);
    // The destructor waits for the queued allreduces, which complete now
    // that rank 1 takes part.
  });
}

// ------------------------------------------------------------ processes

constexpr auto kChildDeadline = 90s;
constexpr const char* kStarted = "DTRAIN_CHILD_STARTED";
constexpr const char* kChecksum = "PARAMS_CRC32C ";

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);  // test harness only; library code never reads the env
  return v ? v : fallback;
}

uint32_t checksum(const std::vector<std::vector<float>>& params) {
  uint32_t crc = 0;
  for (const auto& p : params) crc = crc32c_extend(crc, p.data(), p.size() * sizeof(float));
  return crc;
}

TEST(AllReduceProcesses, TwoProcessesOverZmqStayIdenticalAndMatchLocal) {
  const std::string job = fmt::format("allreduce-strategy-{}", getpid());
  comm::RendezvousServer coordinator("127.0.0.1", 0, 2, comm::JobAuth(job, ""), Logger::null());
  std::vector<testing::ChildProcess> children;
  for (int r = 0; r < 2; ++r) {
    children.push_back(
        testing::spawn_test_child("AllReduceProcesses.DISABLED_Worker",
                                  {{"DTRAIN_TEST_RANK", std::to_string(r)},
                                   {"DTRAIN_TEST_JOB", job},
                                   {"DTRAIN_TEST_COORDINATOR", coordinator.address()}}));
  }
  std::vector<std::string> sums;
  for (int r = 0; r < 2; ++r) {
    testing::ChildProcess& child = children[static_cast<size_t>(r)];
    const auto status = child.wait(Deadline::after(kChildDeadline));
    ASSERT_TRUE(status.has_value()) << "rank " << r << " still running; output:\n"
                                    << child.output();
    EXPECT_TRUE(status->ok()) << "rank " << r << " " << status->describe() << "; output:\n"
                              << child.output();
    ASSERT_NE(child.output().find(kStarted), std::string::npos) << child.output();
    const size_t at = child.output().find(kChecksum);
    ASSERT_NE(at, std::string::npos) << child.output();
    sums.push_back(child.output().substr(at, child.output().find('\n', at) - at));
  }
  EXPECT_EQ(sums[0], sums[1]) << "the two workers' parameters differ";
}

TEST(AllReduceProcesses, DISABLED_Worker) {
  const int rank = std::stoi(env_or("DTRAIN_TEST_RANK", "-1"));
  ASSERT_GE(rank, 0) << "run by AllReduceProcesses.TwoProcessesOverZmqStayIdenticalAndMatchLocal";
  std::printf("%s rank %d\n", kStarted, rank);
  std::fflush(stdout);
  comm::ZmqTransportOptions options;
  options.rank = rank;
  options.world_size = 2;
  options.prefer_ipc = false;
  options.ipc_dir = "";  // loopback tcp only: no socket files to clean up
  auto transport = comm::connect_zmq_transport(
      options, comm::JobAuth(env_or("DTRAIN_TEST_JOB", ""), ""),
      env_or("DTRAIN_TEST_COORDINATOR", ""), false, Deadline::after(30s), Logger::null());
  comm::Communicator comm(*transport, comm_options(30s));
  AllReduceOptions strategy_options;
  strategy_options.bucket_bytes = 256;
  auto strategy = make_strategy(rank, comm, Mode::kOverlapped, strategy_options);
  const std::vector<Batch> batches = make_batches(4, 11, 13);
  for (const Batch& b : batches) {
    const Batch mine = share(b, {7, 4}, rank);
    strategy->train_step(mine.x, mine.y);
  }
  const auto params = snapshot(strategy->model());
  EXPECT_LT(max_relative_difference(local_reference(batches), params), 1e-5);
  std::printf("%s%08x\n", kChecksum, checksum(params));
  std::fflush(stdout);
  comm.barrier();  // neither transport says goodbye while the other still needs it
}

}  // namespace
}  // namespace dtrain::strategy
