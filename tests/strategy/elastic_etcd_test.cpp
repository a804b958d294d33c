// ElasticAllReduce with its generations in etcd (options.etcd): three
// workers as threads form a group through a real etcd (testing/etcd_server.h),
// one leaves (its strategy is destroyed: its lease is revoked, its links
// close), and the other two re-form as generation 1 and keep training with
// equal weights. Their transports bind their ipc sockets in the folder
// given (the launcher's private run folder) and leave none behind. Skipped
// when etcd is not installed.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "core/error.h"
#include "strategy/elastic_allreduce.h"
#include "strategy_test_util.h"
#include "testing/etcd_server.h"
#include "testing/fault_fs.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;

ElasticAllReduceOptions etcd_worker(const std::string& endpoint, int slot,
                                    const std::string& ipc_dir) {
  ElasticAllReduceOptions o;
  o.job_name = "etcd-elastic";
  o.slot = slot;
  o.ipc_dir = ipc_dir;
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

size_t socket_files(const std::string& dir) {
  size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".sock") ++n;
  }
  return n;
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
  const testing::TempDir ipc_dir;
  std::vector<size_t> sockets_seen(3);
  {
    std::vector<std::jthread> threads;
    for (int slot = 0; slot < 3; ++slot) {
      threads.emplace_back([&, slot] {
        const size_t i = static_cast<size_t>(slot);
        try {
          ElasticAllReduce worker(
              etcd_worker(server.endpoint(), slot, ipc_dir.path()),
              [] { return test::make_mlp(5); }, test::sgd(), cross_entropy_loss(), Logger::null());
          sockets_seen[i] = socket_files(ipc_dir.path());  // at least its own
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
  for (size_t i = 0; i < 3; ++i) EXPECT_GE(sockets_seen[i], 1u) << "slot " << i;
  EXPECT_EQ(socket_files(ipc_dir.path()), 0u);  // each transport removed its own
}

}  // namespace
}  // namespace dtrain::strategy
