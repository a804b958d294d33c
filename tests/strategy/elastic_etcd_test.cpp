// ElasticAllReduce with its generations in etcd (options.etcd): three
// workers as threads form a group through a real etcd (testing/etcd_server.h),
// one leaves (its strategy is destroyed: its lease is revoked, its links
// close), and the other two re-form as generation 1 and keep training with
// equal weights. Skipped when etcd is not installed.
#include <gtest/gtest.h>

#include <thread>

#include "core/error.h"
#include "strategy/elastic_allreduce.h"
#include "strategy_test_util.h"
#include "testing/etcd_server.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;

ElasticAllReduceOptions etcd_worker(const std::string& endpoint, int slot) {
  ElasticAllReduceOptions o;
  o.job_name = "etcd-elastic";
  o.slot = slot;
  o.secret = "a test secret";
  // Also bounds each collective: on one host the group shares memory, where a
  // peer that left is noticed at this timeout, not by the heartbeat.
  o.rendezvous_timeout = 8s;
  o.heartbeat_timeout = 2s;
  comm::EtcdRendezvousOptions e;
  e.endpoint = endpoint;
  e.job_id = "elastic-test";
  e.min_workers = 2;
  e.max_workers = 3;
  e.settle = 20s;  // the first group is all three (max_workers), never fewer
  e.lease_ttl = 2s;
  e.poll_interval = 20ms;
  e.call_timeout = 2s;
  o.etcd = e;
  return o;
}

TEST(ElasticEtcd, SurvivorsOfALeavingWorkerReformAndTrainTogether) {
  if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
  testing::EtcdServer server;
  testing::ready_etcd_client(server);
  const std::vector<test::Batch> batches = test::make_batches(4, 6, 11);
  std::vector<std::string> errors(3);
  std::vector<std::vector<std::vector<float>>> weights(3);
  std::vector<uint32_t> generation(3);
  std::vector<int64_t> world(3);
  {
    std::vector<std::jthread> threads;
    for (int slot = 0; slot < 3; ++slot) {
      threads.emplace_back([&, slot] {
        const size_t i = static_cast<size_t>(slot);
        try {
          ElasticAllReduce worker(
              etcd_worker(server.endpoint(), slot), [] { return test::make_mlp(5); }, test::sgd(),
              cross_entropy_loss(), Logger::null());
          generation[i] = worker.generation();
          world[i] = worker.world_size();
          if (slot == 2) {
            worker.train_step(batches[0].x, batches[0].y);
            return;  // leaves: its lease is revoked, its links close
          }
          TrainingPosition position;
          for (size_t step = 0; step < batches.size(); ++step) {
            for (;;) {
              try {
                worker.train_step(batches[step].x, batches[step].y);
                break;
              } catch (const CommError& e) {
                worker.reform(position, e.what());
              }
            }
          }
          generation[i] = worker.generation();
          world[i] = worker.world_size();
          weights[i] = test::snapshot(worker.model());
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    }
  }
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(errors[i], "") << "slot " << i;
  EXPECT_EQ(generation[2], 0u);
  EXPECT_EQ(world[2], 3);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_GE(generation[i], 1u);
    EXPECT_EQ(world[i], 2);
  }
  EXPECT_EQ(generation[0], generation[1]);
  EXPECT_EQ(weights[0], weights[1]);
  ASSERT_FALSE(weights[0].empty());
}

}  // namespace
}  // namespace dtrain::strategy
