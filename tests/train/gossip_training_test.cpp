// The trainer with the real gossip strategy, workers as threads over an
// InProcPeerHub (no processes): the chief's metrics.jsonl carries gossip's
// consensus distance in its step events and the evaluation of worker 0's own
// model beside the average in its epoch events, and every worker's fit()
// ends. What the strategy computes is tested in
// tests/strategy/gossip_strategy_test.cpp; the processes in
// tests/ft/gossip_failure_test.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "comm/peer/inproc_peer_link.h"
#include "data/synthetic.h"
#include "optim/optimizer_config.h"
#include "strategy/gossip_strategy.h"
#include "testing/fault_fs.h"
#include "train/model_builder.h"
#include "train/trainer.h"
#include "train_test_util.h"

namespace dtrain::train {
namespace {

using namespace std::chrono_literals;
using test_util::layer;

JobConfig blobs_job(const std::string& output) {
  JobConfig job;
  job.name = "blobs";
  job.seed = 3;
  job.output = output;
  job.model.input_shape = {8};
  job.model.layers = {layer("linear", "fc1", 16), layer("relu", "relu"), layer("linear", "fc2", 3)};
  job.optimizer.type = "sgd";
  job.optimizer.lr = 0.05f;
  job.optimizer.momentum = 0.9f;
  job.train.epochs = 2;
  job.train.batch_size = 30;  // 10 rows per worker
  job.train.log_every_steps = 5;
  job.train.eval_batch_size = 50;
  return job;
}

data::TensorDataset blobs(int64_t start, int64_t samples) {
  data::BlobsOptions o;
  o.samples = 800;
  o.features = 8;
  o.num_classes = 3;
  o.seed = 11;
  return data::make_gaussian_blobs(o).slice(start, samples);
}

void run_gossip_job(const std::string& mode, const testing::TempDir& dir) {
  constexpr int kWorkers = 3;
  const JobConfig job = blobs_job(dir.path());
  const auto train = blobs(0, 300), test = blobs(600, 200);  // 10 steps an epoch
  strategy::GossipOptions o;
  o.mode = strategy::parse_gossip_mode(mode);
  o.topology = strategy::gossip::TopologyKind::kRing;
  o.consensus_every = 5;
  o.timeout = 30s;
  comm::InProcPeerHub hub(kWorkers);
  std::vector<std::unique_ptr<strategy::GossipStrategy>> workers;
  for (int r = 0; r < kWorkers; ++r) {
    workers.push_back(std::make_unique<strategy::GossipStrategy>(
        hub.link(r),
        [&job] {
          Rng rng(job.seed);
          return build_model(job.model, rng);
        },
        [&job](std::vector<Variable> p) { return nn::make_optimizer(job.optimizer, std::move(p)); },
        o, strategy::cross_entropy_loss(), Logger::null()));
  }
  JsonLinesWriter metrics(dir.file("metrics.jsonl"), job.train.log_every_steps);
  std::vector<std::exception_ptr> errors(kWorkers);
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < kWorkers; ++r) {
      threads.emplace_back([&, r] {
        try {
          Trainer trainer(job, *workers[static_cast<size_t>(r)], Logger::null());
          if (r == 0) trainer.add_callback(metrics);
          trainer.fit(train, test);
          workers[static_cast<size_t>(r)]->finish();
        } catch (...) {
          errors[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    }
  }
  for (int r = 0; r < kWorkers; ++r) {
    if (!errors[static_cast<size_t>(r)]) continue;
    try {
      std::rethrow_exception(errors[static_cast<size_t>(r)]);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "worker " << r << ": " << e.what();
    }
  }
}

void expect_gossip_metrics(const testing::TempDir& dir) {
  std::ifstream in(dir.file("metrics.jsonl"));
  int consensus = 0, epochs = 0;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json e = nlohmann::json::parse(line);
    if (e["event"] == "step" && e.contains("consensus_distance")) {
      ++consensus;
      EXPECT_GE(e["consensus_distance"].get<double>(), 0.0) << e.dump();
    }
    if (e["event"] == "epoch") {
      ++epochs;
      ASSERT_TRUE(e.contains("test_accuracy_worker0")) << e.dump();
      ASSERT_TRUE(e.contains("test_loss_worker0")) << e.dump();
      if (e["epoch"] == 2) {  // both learned the separable blobs
        EXPECT_GT(e["test_accuracy"].get<double>(), 0.9) << e.dump();
        EXPECT_GT(e["test_accuracy_worker0"].get<double>(), 0.9) << e.dump();
      }
    }
  }
  EXPECT_EQ(epochs, 2);
  EXPECT_GE(consensus, 1) << "no step event carries the consensus distance";
}

TEST(GossipTraining, SyncReportsTheConsensusAndWorkerZerosModel) {
  testing::TempDir dir;
  run_gossip_job("sync", dir);
  expect_gossip_metrics(dir);
}

TEST(GossipTraining, AsyncReportsTheConsensusAndWorkerZerosModel) {
  testing::TempDir dir;
  run_gossip_job("async", dir);
  expect_gossip_metrics(dir);
}

}  // namespace
}  // namespace dtrain::train
