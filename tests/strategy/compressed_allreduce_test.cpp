// AllReduceStrategy with compression and local SGD (docs/compression.md):
// workers as threads over an InProcHub. Method none is the dense path bit
// for bit; each compressor trains; a checkpointed and resumed compressed run
// is bit-identical to an uninterrupted one; local SGD averages the models
// every H updates; bytes on the wire shrink.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/collectives/communicator.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/sequential.h"
#include "strategy/allreduce_strategy.h"
#include "strategy_test_util.h"

namespace dtrain::strategy {
namespace {

using test::Batch;
using test::make_batches;
using test::make_mlp;
using test::run_workers;
using test::sgd;
using test::snapshot;

using Params = std::vector<std::vector<float>>;

compress::Options codec(compress::Method method) {
  compress::Options o;
  o.method = method;
  o.min_size = 0;  // the test MLP's tensors are small: compress them all
  o.density = 0.25;
  o.rank = 1;
  o.levels = 8;
  return o;
}

AllReduceOptions options_with(const CompressionSettings& settings) {
  AllReduceOptions o;
  o.bucket_bytes = 256;  // several buckets
  o.compression = settings;
  return o;
}

// Each worker's rows of a batch: the halves (and thirds) of `rows`.
Batch rows_of(const Batch& batch, int rank, int world) {
  const int64_t rows = batch.x.shape()[0];
  const int64_t begin = rows * rank / world;
  const int64_t end = rows * (rank + 1) / world;
  return {batch.x.narrow(begin, end - begin),
          std::vector<int64_t>(batch.y.begin() + begin, batch.y.begin() + end)};
}

// Trains `world` workers on `batches` with `settings`; returns each rank's
// parameters.
std::vector<Params> train(int world, const CompressionSettings& settings,
                          const std::vector<Batch>& batches) {
  std::vector<Params> out(static_cast<size_t>(world));
  run_workers(world, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceStrategy s(make_mlp(1), sgd(), comm, options_with(settings));
    for (const Batch& b : batches) {
      const Batch mine = rows_of(b, rank, world);
      s.train_step(mine.x, mine.y);
    }
    out[static_cast<size_t>(rank)] = snapshot(s.model());
  });
  return out;
}

// Batches whose label is the arg-max of the first three features: a problem
// the MLP can learn (make_batches' labels are random).
std::vector<Batch> learnable_batches(int count, int64_t rows, uint64_t seed) {
  std::vector<Batch> batches = make_batches(count, rows, seed);
  for (Batch& b : batches) {
    for (int64_t i = 0; i < rows; ++i) {
      const float* x = b.x.data() + i * 6;
      b.y[static_cast<size_t>(i)] = std::max_element(x, x + 3) - x;
    }
  }
  return batches;
}

// 6 -> 512 -> 3: about 5,000 floats, enough for top-k 1% to show.
std::unique_ptr<nn::Module> make_wide_mlp(uint64_t seed) {
  Rng rng(seed);
  auto model = std::make_unique<nn::Sequential>();
  model->add("fc1", std::make_unique<nn::Linear>(6, 512, rng));
  model->add("relu", std::make_unique<nn::ReLU>());
  model->add("fc2", std::make_unique<nn::Linear>(512, 3, rng));
  return model;
}

double mean_loss(nn::Module& model, const std::vector<Batch>& batches) {
  LossFn loss = cross_entropy_loss();
  double sum = 0.0;
  for (const Batch& b : batches) sum += loss(model.forward(Variable(b.x)), b.y).item();
  return sum / static_cast<double>(batches.size());
}

TEST(CompressedAllReduce, MethodNoneIsTheDensePathBitForBit) {
  const auto batches = make_batches(6, 12, 3);
  CompressionSettings none;  // kNone, local_steps 1
  none.start_step = 2;       // and a warm-up that means nothing without a method
  const auto dense = train(2, CompressionSettings{}, batches);
  const auto with_none = train(2, none, batches);
  EXPECT_EQ(dense, with_none);
}

TEST(CompressedAllReduce, EveryCompressorKeepsReplicasIdenticalAndLearns) {
  const auto batches = learnable_batches(30, 24, 5);
  double start_loss = 0.0;
  {
    auto model = make_mlp(1);
    start_loss = mean_loss(*model, batches);
  }
  for (const compress::Method method :
       {compress::Method::kFp16, compress::Method::kBf16, compress::Method::kTopK,
        compress::Method::kRandomK, compress::Method::kQsgd, compress::Method::kSign,
        compress::Method::kPowerSgd}) {
    SCOPED_TRACE(std::string(compress::to_string(method)));
    CompressionSettings settings;
    settings.codec = codec(method);
    std::vector<Params> params(3);
    double end_loss = 0.0;
    run_workers(3, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
      AllReduceStrategy s(make_mlp(1), sgd(), comm, options_with(settings));
      for (int epoch = 0; epoch < 2; ++epoch) {
        for (const Batch& b : batches) {
          const Batch mine = rows_of(b, rank, 3);
          s.train_step(mine.x, mine.y);
        }
      }
      params[static_cast<size_t>(rank)] = snapshot(s.model());
      if (rank == 0) end_loss = mean_loss(s.model(), batches);
    });
    EXPECT_EQ(params[0], params[1]);
    EXPECT_EQ(params[0], params[2]);
    EXPECT_LT(end_loss, 0.8 * start_loss);
  }
}

TEST(CompressedAllReduce, FewerBytesOnTheWireThanDense) {
  const auto batches = make_batches(3, 16, 9);
  CompressionSettings topk;
  topk.codec = codec(compress::Method::kTopK);
  topk.codec.density = 0.01;
  std::map<std::string, CommStats> seen;
  for (const auto& [name, settings] :
       std::vector<std::pair<std::string, CompressionSettings>>{{"dense", {}}, {"topk", topk}}) {
    run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
      AllReduceOptions options = options_with(settings);
      options.bucket_bytes = size_t{1} << 20;  // one bucket
      AllReduceStrategy s(make_wide_mlp(1), sgd(), comm, options);
      for (const Batch& b : batches) {
        const Batch mine = rows_of(b, rank, 2);
        s.train_step(mine.x, mine.y);
      }
      if (rank == 0) seen[name] = s.last_comm();
    });
  }
  ASSERT_GT(seen["dense"].bytes_sent, 0u);
  EXPECT_EQ(seen["dense"].dense_bytes, seen["topk"].dense_bytes);
  // The ring sends (W - 1) / W of the floats twice: with two workers, the
  // buffer's size once, plus the messages' headers.
  EXPECT_GE(seen["dense"].bytes_sent, seen["dense"].dense_bytes);
  EXPECT_LT(seen["topk"].bytes_sent, seen["dense"].bytes_sent / 5);
}

TEST(CompressedAllReduce, ResumedRunIsBitIdenticalToAnUninterruptedOne) {
  const auto batches = make_batches(10, 12, 11);
  // (method, DGC momentum): random-k's velocity must be restored too.
  for (const auto& [method, momentum] :
       std::vector<std::pair<compress::Method, double>>{{compress::Method::kTopK, 0.0},
                                                        {compress::Method::kRandomK, 0.0},
                                                        {compress::Method::kRandomK, 0.5},
                                                        {compress::Method::kQsgd, 0.0},
                                                        {compress::Method::kSign, 0.0},
                                                        {compress::Method::kPowerSgd, 0.0}}) {
    SCOPED_TRACE(fmt::format("{} momentum {}", compress::to_string(method), momentum));
    CompressionSettings settings;
    settings.codec = codec(method);
    settings.codec.momentum = momentum;
    settings.start_step = 2;
    const auto uninterrupted = train(2, settings, batches);
    // Stop after 6 updates: keep model and optimizer state (with the
    // compressor's), then go on in new strategies.
    std::vector<StateDict> models(2);
    std::vector<StateDict> optimizers(2);
    std::vector<StateDict> ranks(2);
    run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
      AllReduceStrategy s(make_mlp(1), sgd(), comm, options_with(settings));
      for (size_t i = 0; i < 6; ++i) {
        const Batch mine = rows_of(batches[i], rank, 2);
        s.train_step(mine.x, mine.y);
      }
      models[static_cast<size_t>(rank)] = s.model().state_dict().clone();
      optimizers[static_cast<size_t>(rank)] = s.optimizer_state().clone();
      ranks[static_cast<size_t>(rank)] = s.rank_state().clone();
    });
    std::vector<Params> resumed(2);
    run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
      AllReduceStrategy s(make_mlp(7), sgd(), comm, options_with(settings));
      s.model().load_state_dict(models[static_cast<size_t>(rank)], true);
      // Every rank loads rank 0's shared state (as from the checkpoint) and
      // its own rank state.
      s.load_optimizer_state(optimizers[0]);
      s.sync_replicas();
      s.load_rank_state(ranks[static_cast<size_t>(rank)]);
      for (size_t i = 6; i < batches.size(); ++i) {
        const Batch mine = rows_of(batches[i], rank, 2);
        s.train_step(mine.x, mine.y);
      }
      resumed[static_cast<size_t>(rank)] = snapshot(s.model());
    });
    EXPECT_EQ(uninterrupted[0], resumed[0]);
    EXPECT_EQ(uninterrupted[1], resumed[1]);
  }
}

TEST(CompressedAllReduce, StateOfAnotherWorkerCountIsDropped) {
  const auto batches = make_batches(4, 12, 13);
  CompressionSettings settings;
  settings.codec = codec(compress::Method::kTopK);
  StateDict saved;
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceStrategy s(make_mlp(1), sgd(), comm, options_with(settings));
    for (const Batch& b : batches) {
      const Batch mine = rows_of(b, rank, 2);
      s.train_step(mine.x, mine.y);
    }
    if (rank == 0) saved = s.rank_state().clone();
  });
  EXPECT_EQ(saved.metadata().at("workers"), "2");
  run_workers(3, [&](int /*rank*/, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceStrategy s(make_mlp(1), sgd(), comm, options_with(settings));
    s.load_rank_state(saved);
    const compress::State state = s.compressor()->save();
    for (const auto& [name, values] : state.arrays) {
      for (const float v : values) ASSERT_EQ(v, 0.0f) << name;
    }
  });
}

TEST(CompressedAllReduce, LocalSgdAveragesTheModelsEveryHUpdates) {
  const auto batches = make_batches(8, 12, 17);
  CompressionSettings local;
  local.local_steps = 4;
  local.start_step = 2;
  std::vector<std::vector<Params>> after(2);  // per rank, after each update
  run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceStrategy s(make_mlp(1), sgd(), comm, options_with(local));
    for (const Batch& b : batches) {
      const Batch mine = rows_of(b, rank, 2);
      s.train_step(mine.x, mine.y);
      after[static_cast<size_t>(rank)].push_back(snapshot(s.model()));
    }
  });
  // Updates 1-2 are dense (identical replicas), 3-5 local (apart), 6 an
  // averaging (identical again), 7-8 local.
  for (const size_t u : {0u, 1u, 5u}) EXPECT_EQ(after[0][u], after[1][u]) << "update " << u + 1;
  for (const size_t u : {2u, 3u, 4u, 6u, 7u}) {
    EXPECT_NE(after[0][u], after[1][u]) << "update " << u + 1;
  }
}

TEST(CompressedAllReduce, TheGuardsLeverWeakensAndRebuildsTheCompressor) {
  CompressionSettings settings;
  settings.codec = codec(compress::Method::kPowerSgd);
  run_workers(2, [&](int /*rank*/, comm::Communicator& comm, comm::InProcHub&) {
    AllReduceStrategy s(make_mlp(1), sgd(), comm, options_with(settings));
    EXPECT_TRUE(s.reduces_communication());
    EXPECT_EQ(s.communication(), "powersgd rank 1 + EF");
    s.set_communication_level(1);
    EXPECT_EQ(s.communication(), "powersgd rank 2 + EF");
    ASSERT_NE(s.compressor(), nullptr);
    EXPECT_EQ(s.compressor()->options().rank, 2);
    s.set_communication_level(CompressionSettings::kDenseLevel);
    EXPECT_EQ(s.communication(), "dense");
    EXPECT_EQ(s.compressor(), nullptr);
  });
}

TEST(CompressedAllReduce, ANonFiniteGradientOnOneWorkerStopsEveryWorkerAlike) {
  const auto batches = learnable_batches(3, 12, 19);
  for (const compress::Method method : {compress::Method::kQsgd, compress::Method::kTopK,
                                        compress::Method::kSign, compress::Method::kPowerSgd}) {
    SCOPED_TRACE(std::string(compress::to_string(method)));
    CompressionSettings settings;
    settings.codec = codec(method);
    std::vector<std::string> errors(2);
    run_workers(2, [&](int rank, comm::Communicator& comm, comm::InProcHub&) {
      AllReduceStrategy s(make_mlp(1), sgd(), comm, options_with(settings));
      Batch mine = rows_of(batches[0], rank, 2);
      if (rank == 1) {
        mine.x = mine.x.clone();
        mine.x.data()[0] = NAN;
      }
      try {
        s.train_step(mine.x, mine.y);
      } catch (const NumericError& e) {
        errors[static_cast<size_t>(rank)] = e.what();
      }
      // Not a CommError: the group still works.
      EXPECT_FALSE(s.failed());
      const Batch next = rows_of(batches[1], rank, 2);
      s.train_step(next.x, next.y);
    });
    EXPECT_NE(errors[0].find("fc"), std::string::npos) << errors[0];
    EXPECT_NE(errors[1].find("fc"), std::string::npos) << errors[1];
  }
}

TEST(CompressedAllReduce, CompressionNeedsTheNativeCommunicator) {
  CompressionSettings settings;
  settings.codec = codec(compress::Method::kFp16);
  run_workers(1, [&](int /*rank*/, comm::Communicator& comm, comm::InProcHub&) {
    EXPECT_THROW(AllReduceStrategy(make_mlp(1), sgd(), static_cast<comm::Collectives&>(comm),
                                   options_with(settings)),
                 UsageError);
  });
}

}  // namespace
}  // namespace dtrain::strategy
