// Server failure and recovery (server.h "replacement", client.h "Server
// failures"): a server is "killed" at a chosen version from inside its own
// loop (ServerOptions::on_version throws, the thread ends and the Server is
// destroyed, which breaks every connection to it, as a process death does),
// and a replacement binds the same ipc endpoint. The workers recover by
// themselves. In sync the update sequence is deterministic, so a recovery
// that loses or doubles a push shows as different bits at the end.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include "ps/client.h"
#include "ps/server.h"
#include "ps/state_layout.h"
#include "ps_test_util.h"
#include "testing/fault_fs.h"

namespace dtrain::ps {
namespace {

using testing::CapturingLog;
using testing::kGenerous;

constexpr int kServers = 2;
constexpr int kWorkers = 2;
constexpr uint64_t kSteps = 12;
constexpr uint64_t kCheckpointAt = 5;  // worker 0 saves the servers' state at version 5

struct ServerKilled : std::runtime_error {
  ServerKilled() : std::runtime_error("killed by the test") {}
};

StateDict model_spec() {
  StateDict d;
  d.insert("w", Tensor::zeros({5, 7}));  // 35 floats: split 18 / 17 over two servers
  d.insert("b", Tensor::zeros({3}));
  return d;
}

// Worker w's gradient at step t: fixed, different per worker and step.
std::vector<Tensor> gradient(int w, uint64_t t) {
  std::vector<Tensor> g;
  for (const auto& [name, tensor] : model_spec()) {
    Tensor x = Tensor::zeros(tensor.shape());
    float* p = x.data();
    for (int64_t i = 0; i < x.numel(); ++i) {
      p[i] = std::sin(0.3f * static_cast<float>(i) + 1.7f * static_cast<float>(w) +
                      0.11f * static_cast<float>(t));
    }
    g.push_back(x);
  }
  return g;
}

std::vector<float> flatten(const std::vector<Tensor>& tensors) {
  std::vector<float> out;
  for (const Tensor& t : tensors) {
    const auto v = t.to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

// What a trainer checkpoint's sections hold for a ps job (PsStrategy layout).
ServerRestore restore_from(const PsState& state) {
  ServerRestore r;
  r.model = state.dense.clone();
  r.optimizer = state.optimizer.clone();
  r.optimizer.merge(state.sparse, kCheckpointSparsePrefix);
  r.optimizer.metadata()[kCheckpointVersionKey] = std::to_string(state.version);
  r.origin = "the test's checkpoint";
  return r;
}

// S servers on ipc endpoints; server `victim` (if any) dies when it reaches
// version `kill_at` and is replaced, restored from worker 0's checkpoint
// when `restore` holds.
class Job {
 public:
  // With `replicas`, each server's range is also held by the other server.
  Job(optim::OptimizerConfig optimizer, std::optional<uint64_t> kill_at, bool restore,
      int replicas = 0)
      : auth_("recovery-test", "s3cret"),
        optimizer_(optimizer),
        restore_(restore),
        replicas_(replicas) {
    for (int s = 0; s < kServers; ++s) {
      endpoints_.push_back("ipc://" + dir_.file("server-" + std::to_string(s)));
    }
    for (int s = 0; s < kServers; ++s) {
      std::function<void(uint64_t)> hook;
      if (kill_at && s == kVictim) {
        hook = [at = *kill_at](uint64_t version) {
          if (version == at) throw ServerKilled();
        };
      }
      start(s, options(s, false, std::move(hook)));
    }
    supervisor_ = std::jthread([this](std::stop_token stop) { supervise(stop); });
  }
  ~Job() {
    supervisor_.request_stop();
    supervisor_.join();
    for (auto& t : threads_) t.request_stop();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  // Runs both workers through kSteps sync steps; returns worker 0's final
  // parameters (version kSteps). With `one_round_trip` each step is one
  // Client::push_and_pull instead of push() then pull().
  std::vector<float> train(bool one_round_trip = false) {
    std::vector<float> final_params;
    auto worker = [&](int w) {
      ClientOptions o;
      o.worker = w;
      o.num_workers = kWorkers;
      o.server_endpoints = endpoints_;
      o.timeout = kGenerous;
      o.heartbeat_interval = std::chrono::milliseconds(100);
      Client client(o, auth_, log_.logger());
      const StateDict spec = model_spec();
      client.init(spec, {});
      std::vector<Tensor> params;
      for (const auto& [name, t] : spec) params.push_back(Tensor::zeros(t.shape()));
      uint64_t version = client.pull(params, 0);
      for (uint64_t t = 0; t < kSteps; ++t) {
        if (w == 0 && version == kCheckpointAt) {
          std::lock_guard lock(mutex_);
          checkpoint_ = client.pull_state();
        }
        if (one_round_trip) {
          DensePush push;
          push.samples = w + 1;
          push.lr = 0.05f;
          push.version = version;
          version = client.push_and_pull(gradient(w, t), push, params, version + 1);
          continue;
        }
        client.push(gradient(w, t), w + 1, 0.05f, version);
        version = client.pull(params, version + 1);
      }
      if (w == 0) final_params = flatten(params);
      client.finish();
    };
    std::jthread other(worker, 1);
    worker(0);
    other.join();
    return final_params;
  }

  CapturingLog& log() { return log_; }
  bool replaced() const { return replaced_; }

 private:
  static constexpr int kVictim = 1;

  ServerOptions options(int s, bool replacement, std::function<void(uint64_t)> hook) {
    ServerOptions o;
    o.server = s;
    o.num_servers = kServers;
    o.num_workers = kWorkers;
    o.bind_endpoint = endpoints_[static_cast<size_t>(s)];
    o.consistency = Consistency::kSync;
    o.optimizer = optimizer_;
    o.replacement = replacement;
    o.on_version = std::move(hook);
    o.replicas = replicas_;
    return o;
  }

  void start(int s, ServerOptions o) {
    servers_.push_back(std::make_unique<Server>(std::move(o), auth_, log_.logger()));
    Server* server = servers_.back().get();
    server->set_server_endpoints(endpoints_);
    threads_.emplace_back([this, server, s](std::stop_token stop) {
      try {
        server->run(stop);
      } catch (const ServerKilled&) {
        // Let the supervisor replace it (it destroys this Server first).
        std::lock_guard lock(mutex_);
        died_server_ = s;
        died_.notify_all();
      }
    });
  }

  // Waits for the victim's death, destroys it (its connections break) and
  // starts the replacement on the same endpoint.
  void supervise(const std::stop_token& stop) {
    size_t s = 0;
    {
      std::unique_lock lock(mutex_);
      if (!died_.wait(lock, stop, [&] { return died_server_ >= 0; })) return;
      s = static_cast<size_t>(died_server_);
    }
    threads_[s].join();
    servers_[s].reset();
    ServerOptions o = options(static_cast<int>(s), true, {});
    if (restore_) {
      std::lock_guard lock(mutex_);
      ASSERT_TRUE(checkpoint_.has_value()) << "the server died before the checkpoint";
      o.restore = restore_from(*checkpoint_);
    }
    servers_[s] = std::make_unique<Server>(std::move(o), auth_, log_.logger());
    Server* server = servers_[s].get();
    server->set_server_endpoints(endpoints_);
    threads_[s] = std::jthread([server](std::stop_token st) { server->run(st); });
    replaced_ = true;
  }

  dtrain::testing::TempDir dir_;
  CapturingLog log_;
  comm::JobAuth auth_;
  optim::OptimizerConfig optimizer_;
  bool restore_;
  int replicas_;
  std::vector<std::string> endpoints_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::jthread> threads_;
  std::condition_variable_any died_;
  int died_server_ = -1;  // guarded by mutex_
  std::atomic<bool> replaced_{false};
  std::mutex mutex_;
  std::optional<PsState> checkpoint_;
  std::jthread supervisor_;  // last: joined first
};

optim::OptimizerConfig sgd(float momentum) {
  optim::OptimizerConfig c;
  c.type = "sgd";
  c.lr = 0.05f;
  c.momentum = momentum;
  return c;
}

TEST(PsRecovery, AServerReplacedRightAfterItsCheckpointEndsBitIdenticalToAFaultFreeRun) {
  // Server 1 dies the moment it closes version 5 (before answering the
  // pulls), right after worker 0's checkpoint at version 5. Its replacement
  // restores version 5 with the momentum buffers; both workers re-join and
  // push version 5 again; it is applied once.
  const std::vector<float> reference = Job(sgd(0.9f), std::nullopt, false).train();
  Job faulty(sgd(0.9f), kCheckpointAt + 1, true);
  const std::vector<float> recovered = faulty.train();
  ASSERT_TRUE(faulty.replaced());
  EXPECT_TRUE(
      faulty.log().contains("replacement restored its shard from the test's checkpoint "
                            "(version 5; dense values from worker "));
  EXPECT_TRUE(faulty.log().contains("re-joined replaced server 1"));
  ASSERT_EQ(recovered.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i) ASSERT_EQ(recovered[i], reference[i]) << i;
}

TEST(PsRecovery, OneRoundTripStepsThroughAReplacedServerEndBitIdenticalToPushThenPull) {
  // The same failure with push_and_pull: when server 1 dies closing version
  // 5, one worker's pull and the other's push and pull wait on it; both are
  // sent again to the replacement (the pull behind the push again). The
  // reference takes separate push and pull calls without a failure.
  const std::vector<float> reference = Job(sgd(0.9f), std::nullopt, false).train();
  const std::vector<float> fault_free = Job(sgd(0.9f), std::nullopt, false).train(true);
  Job faulty(sgd(0.9f), kCheckpointAt + 1, true);
  const std::vector<float> recovered = faulty.train(true);
  ASSERT_TRUE(faulty.replaced());
  EXPECT_TRUE(faulty.log().contains("re-joined replaced server 1"));
  ASSERT_EQ(fault_free.size(), reference.size());
  ASSERT_EQ(recovered.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i) {
    ASSERT_EQ(fault_free[i], reference[i]) << i;
    ASSERT_EQ(recovered[i], reference[i]) << i;
  }
}

TEST(PsRecovery, OneRoundTripStepsThroughAReplicaFailoverEndBitIdentical) {
  const std::vector<float> reference = Job(sgd(0.9f), std::nullopt, false).train();
  Job faulty(sgd(0.9f), 9, false, 1);
  const std::vector<float> recovered = faulty.train(true);
  ASSERT_TRUE(faulty.replaced());
  EXPECT_TRUE(faulty.log().contains("replacement took its shard from its backup's copy"));
  ASSERT_EQ(recovered.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i) ASSERT_EQ(recovered[i], reference[i]) << i;
}

TEST(PsRecovery, AReplacementWithoutCheckpointTakesTheWorkersLastPulledParameters) {
  // Plain SGD keeps no optimizer state, so the workers' copy of version 5 is
  // all the shard needs: the end is bit-identical again.
  const std::vector<float> reference = Job(sgd(0.0f), std::nullopt, false).train();
  Job faulty(sgd(0.0f), kCheckpointAt + 1, false);
  const std::vector<float> recovered = faulty.train();
  ASSERT_TRUE(faulty.replaced());
  EXPECT_TRUE(faulty.log().contains("last pulled parameters and fresh optimizer state"));
  ASSERT_EQ(recovered.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i) ASSERT_EQ(recovered[i], reference[i]) << i;
}

TEST(PsRecovery, AServerReplacedLongAfterItsCheckpointKeepsEveryParameterUpdate) {
  // Killed at version 9, four versions after the checkpoint: the replacement
  // takes the dense values from the workers' copy of version 8 and only the
  // optimizer state from the checkpoint. Plain SGD has none: every update
  // survives and the end is bit-identical.
  const std::vector<float> reference = Job(sgd(0.0f), std::nullopt, false).train();
  Job faulty(sgd(0.0f), 9, true);
  const std::vector<float> recovered = faulty.train();
  ASSERT_TRUE(faulty.replaced());
  EXPECT_TRUE(faulty.log().contains("moved from version 5 to"));
  ASSERT_EQ(recovered.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i) ASSERT_EQ(recovered[i], reference[i]) << i;
}

TEST(PsRecovery, AServerReplacedLongAfterItsCheckpointHasOnlyOlderMomentum) {
  // The same with momentum: the replaced range goes on with the momentum of
  // version 5, so it differs from the fault-free run; the other server's
  // range is untouched.
  const std::vector<float> reference = Job(sgd(0.9f), std::nullopt, false).train();
  Job faulty(sgd(0.9f), 9, true);
  const std::vector<float> recovered = faulty.train();
  ASSERT_TRUE(faulty.replaced());
  ASSERT_EQ(recovered.size(), reference.size());
  // Server 0 holds "w"'s first 18 floats: untouched by the failure.
  for (size_t i = 0; i < 18; ++i) EXPECT_EQ(recovered[i], reference[i]) << i;
  bool differs = false;
  for (size_t i = 18; i < reference.size(); ++i) differs = differs || recovered[i] != reference[i];
  EXPECT_TRUE(differs) << "the replaced range should go on with version 5's momentum";
}

// With a replica the replacement takes its range from the backup's copy:
// values, optimizer buffers and all, so even long after the checkpoint
// nothing is lost and no checkpoint is read.
void expect_replica_recovery_bit_identical(const optim::OptimizerConfig& optimizer) {
  const std::vector<float> reference = Job(optimizer, std::nullopt, false).train();
  Job faulty(optimizer, 9, false, 1);
  const std::vector<float> recovered = faulty.train();
  ASSERT_TRUE(faulty.replaced());
  EXPECT_TRUE(
      faulty.log().contains("ps server 1: replacement took its shard from its backup's "
                            "copy"));
  EXPECT_FALSE(faulty.log().contains("restored its shard from"));
  ASSERT_EQ(recovered.size(), reference.size());
  for (size_t i = 0; i < reference.size(); ++i) ASSERT_EQ(recovered[i], reference[i]) << i;
}

TEST(PsRecovery, AReplacementFromTheLiveReplicaEndsBitIdenticalWithMomentum) {
  expect_replica_recovery_bit_identical(sgd(0.9f));
}

TEST(PsRecovery, AReplacementFromTheLiveReplicaEndsBitIdenticalWithAdam) {
  optim::OptimizerConfig adam;
  adam.type = "adam";
  adam.lr = 0.01f;
  expect_replica_recovery_bit_identical(adam);
}

TEST(PsRecovery, AReplacementAsksWorkersItHasNotMetToRejoinAndChangesNothing) {
  dtrain::testing::TempDir dir;
  CapturingLog log;
  const comm::JobAuth auth("recovery-test", "s3cret");
  ServerOptions o;
  o.num_workers = 2;
  o.bind_endpoint = "ipc://" + dir.file("server-0");
  o.consistency = Consistency::kSync;
  o.replacement = true;
  Server server(o, auth, log.logger());
  std::jthread serving([&](std::stop_token stop) { server.run(stop); });
  testing::RawPeer peer(o.bind_endpoint, auth);
  Message push;
  push.kind = Kind::kPush;
  push.worker = 1;
  push.samples = 1;
  push.lr = 0.1f;
  const Message r = peer.request(push, 1, 7);
  EXPECT_EQ(r.status, ReplyStatus::kRejoin);
  EXPECT_EQ(r.request_id, 7u);
  EXPECT_NE(r.error.find("has not had worker 1's init yet"), std::string::npos) << r.error;
  serving.request_stop();
  serving.join();
  EXPECT_EQ(server.stats().pushes_applied, 0u);
  EXPECT_FALSE(server.stats().initialised);
}

TEST(PsRecovery, ARepeatedPushIsAnsweredAndNotTakenTwice) {
  // A client whose connection broke sends its push again with the same id.
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  testing::PsJob job(1, 1, options);
  testing::RawPeer peer(job.endpoints()[0], job.auth());
  Message init;
  init.kind = Kind::kInit;
  init.dense = {DenseSpec{"w", {4}}};
  init.floats.assign(4, 0.0f);
  ASSERT_EQ(peer.request(init, 1, 1).status, ReplyStatus::kOk);
  Message push;
  push.kind = Kind::kPush;
  push.samples = 1;
  push.lr = 1.0f;
  push.floats.assign(4, 1.0f);
  EXPECT_EQ(peer.request(push, 1, 2).status, ReplyStatus::kOk);
  EXPECT_EQ(peer.request(push, 1, 2).status, ReplyStatus::kOk);
  Message stats;
  stats.kind = Kind::kStats;
  const Message s = peer.request(stats, 1, 3);
  EXPECT_EQ(s.stats.pushes_applied, 1u);
  EXPECT_EQ(s.stats.version, 1u);
}

}  // namespace
}  // namespace dtrain::ps
