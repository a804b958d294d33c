// A backup takes over a dead server's range (docs/parameter-server.md, "A
// backup takes over"): two servers, each the other's backup (R = 1), two
// sync workers with ClientOptions::replicas = 1. Server 1 dies (its Server is
// destroyed, so every connection to it breaks as at a process death) and no
// replacement is started: training can only go on if server 0 serves server
// 1's range from its copy. The update sequence of sync is deterministic, so
// a takeover that loses, doubles or reorders an update, or starts from a
// stale copy, shows as different bits at the end.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <variant>

#include "ps/client.h"
#include "ps/replication_messages.h"
#include "ps/server.h"
#include "ps/shard_store.h"
#include "ps_test_util.h"
#include "testing/fault_fs.h"
#include "testing/optimizer_configs.h"
#include "testing/process.h"

namespace dtrain::ps {
namespace {

using dtrain::testing::adam;
using dtrain::testing::momentum;
using testing::CapturingLog;
using testing::kGenerous;

constexpr int kServers = 2;
constexpr int kWorkers = 2;
constexpr int kVictim = 1;
constexpr uint64_t kSteps = 10;

// When server 1 dies: while closing a version (the last push of it has
// arrived, the pulls wait; no push reply was sent), or between versions
// (worker 0 kills it after its pull, before its next push). kAtClose: a
// thread of the test whose Server is destroyed (its sockets close as at a
// process death); the kSigkill deaths: a child process. Between versions
// only SIGKILL: a stopped Server answers its parked pulls with an error,
// which a dead process never does.
enum class Death { kNone, kAtClose, kSigkillAtClose, kSigkillBetweenVersions };

ServerOptions server_options(int s, const std::vector<std::string>& endpoints,
                             const optim::OptimizerConfig& optimizer, int replicas) {
  return testing::replicated_server_options(s, kServers, kWorkers, endpoints, optimizer, replicas);
}

// Test harness only; library code never reads the environment.
std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

// The child of the kSigkill deaths: server 1 as a process, until SIGKILLed.
// At version FAILOVER_CLOSE_AT (if not 0) it says so and stops in the middle
// of the close, the pulls waiting, for the parent's SIGKILL.
TEST(PsFailover, DISABLED_ServerOneProcess) {
  const comm::JobAuth auth("failover-test", "s3cret");
  const std::vector<std::string> endpoints{env_or("PS_ENDPOINT0", ""), env_or("PS_ENDPOINT1", "")};
  const optim::OptimizerConfig optimizer =
      env_or("FAILOVER_OPTIMIZER", "") == "adam" ? adam() : momentum();
  ServerOptions o = server_options(kVictim, endpoints, optimizer, 1);
  const uint64_t close_at = std::stoull(env_or("FAILOVER_CLOSE_AT", "0"));
  o.on_version = [close_at](uint64_t version) {
    if (close_at == 0 || version != close_at) return;
    std::printf("closing %llu\n", static_cast<unsigned long long>(version));
    std::fflush(stdout);
    for (;;) pause();  // until the parent's SIGKILL
  };
  Server server(o, auth, Logger::null());
  server.set_server_endpoints(endpoints);
  std::printf("serving\n");
  std::fflush(stdout);
  server.run(std::stop_token());
}

class FailoverJob {
 public:
  FailoverJob(optim::OptimizerConfig optimizer, Death death, uint64_t at, int replicas = 1)
      : auth_("failover-test", "s3cret"),
        optimizer_(std::move(optimizer)),
        death_(death),
        at_(at),
        replicas_(replicas) {
    for (int s = 0; s < kServers; ++s) {
      endpoints_.push_back("ipc://" + dir_.file("server-" + std::to_string(s)));
    }
    const bool process =
        death_ == Death::kSigkillAtClose || death_ == Death::kSigkillBetweenVersions;
    start(0, false);
    if (!process) {
      start(kVictim, false);
      return;
    }
    // One thread owns the child (spawn, wait, signal): ChildProcess is used
    // by one thread only.
    watcher_ = std::jthread([this] {
      const std::map<std::string, std::string> env{
          {"PS_ENDPOINT0", endpoints_[0]},
          {"PS_ENDPOINT1", endpoints_[1]},
          {"FAILOVER_OPTIMIZER", optimizer_.type},
          {"FAILOVER_CLOSE_AT", death_ == Death::kSigkillAtClose ? std::to_string(at_) : "0"}};
      auto child = dtrain::testing::spawn_test_child("PsFailover.DISABLED_ServerOneProcess", env);
      const Deadline deadline = Deadline::after(kGenerous);
      bool cue = false;
      if (death_ == Death::kSigkillAtClose) {
        cue = child.wait_for_line("closing " + std::to_string(at_), deadline);
      } else {
        cue = kill_now_future_.wait_until(deadline.at()) == std::future_status::ready;
      }
      child.signal(SIGKILL);
      const auto status = child.wait(deadline);
      killed_ = cue && status && !status->exited && status->signal == SIGKILL;
      killed_promise_.set_value();
    });
  }
  ~FailoverJob() {
    if (!kill_sent_) kill_now_.set_value();  // a watcher still waiting kills and ends
    watcher_ = {};
    for (auto& t : threads_) t.request_stop();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  // Both workers through kSteps sync steps (push, then pull); worker 0's
  // final parameters. `replace_at`: worker 0 starts a replacement of the dead
  // server when it reaches that version.
  std::vector<float> train(std::optional<uint64_t> replace_at = std::nullopt) {
    return testing::run_sync_workers(
        kWorkers, endpoints_, replicas_, auth_, log_.logger(),
        [&](Client& client, int w, std::vector<Tensor>& params) {
          testing::train_two_tensors(client, w, params, kSteps, [&](uint64_t version) {
            if (w == 0 && death_ == Death::kSigkillBetweenVersions && version == at_) {
              kill_sent_ = true;
              kill_now_.set_value();
              killed_future_.wait();  // bounded: the watcher's waits have deadlines
            }
            if (w == 0 && replace_at && version == *replace_at) {
              // Training goes on only once the replacement's run() returned: it
              // asks the backup while that backup still serves (a replacement
              // started near the end could find every server finished).
              start(kVictim, true);
              ASSERT_EQ(replacement_ran_.get_future().wait_until(Deadline::after(kGenerous).at()),
                        std::future_status::ready);
            }
          });
        });
  }

  CapturingLog& log() { return log_; }
  // kSigkill deaths: whether the child was SIGKILLed on its cue (waits for
  // the watcher to see it exit).
  bool killed() {
    killed_future_.wait();  // bounded: the watcher's waits have deadlines
    return killed_;
  }

 private:
  ServerOptions options(int s, bool replacement) const {
    ServerOptions o = server_options(s, endpoints_, optimizer_, replicas_);
    o.replacement = replacement;
    if (s == kVictim && !replacement && death_ == Death::kAtClose) {
      o.on_version = [at = at_](uint64_t version) {
        if (version == at) throw testing::ServerKilled();
      };
    }
    return o;
  }

  void start(int s, bool replacement) {
    auto server = std::make_unique<Server>(options(s, replacement), auth_, log_.logger());
    server->set_server_endpoints(endpoints_);
    Server* raw = server.get();
    if (static_cast<size_t>(s) < servers_.size()) {
      threads_[static_cast<size_t>(s)].join();
      servers_[static_cast<size_t>(s)] = std::move(server);
    } else {
      servers_.push_back(std::move(server));
      threads_.emplace_back();
    }
    // A killed server's thread destroys it: its sockets close, as at a
    // process death. Only its own thread touches it until join().
    threads_[static_cast<size_t>(s)] =
        std::jthread([this, raw, s, replacement](std::stop_token stop) {
          try {
            raw->run(stop);
          } catch (const testing::ServerKilled&) {
            servers_[static_cast<size_t>(s)].reset();
          }
          if (replacement) replacement_ran_.set_value();
        });
  }

  dtrain::testing::TempDir dir_;
  CapturingLog log_;
  comm::JobAuth auth_;
  optim::OptimizerConfig optimizer_;
  Death death_;
  uint64_t at_;
  int replicas_;
  std::vector<std::string> endpoints_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::jthread> threads_;
  bool kill_sent_ = false;       // worker 0 runs on the thread that owns this job
  std::promise<void> kill_now_;  // worker 0 to the watcher: SIGKILL it now
  std::future<void> kill_now_future_ = kill_now_.get_future();
  std::promise<void> killed_promise_;  // the watcher: the child is gone
  std::future<void> killed_future_ = killed_promise_.get_future();
  bool killed_ = false;                 // written by the watcher before killed_promise_
  std::promise<void> replacement_ran_;  // a replacement's run() returned
  std::jthread watcher_;                // last: joined first
};

void expect_takeover_bit_identical(const optim::OptimizerConfig& optimizer, Death death,
                                   uint64_t at) {
  const std::vector<float> reference = FailoverJob(optimizer, Death::kNone, 0).train();
  FailoverJob faulty(optimizer, death, at);
  const std::vector<float> taken_over = faulty.train();
  if (death != Death::kAtClose) {
    EXPECT_TRUE(faulty.killed());
  }
  EXPECT_TRUE(faulty.log().contains("ps server 0: took over server 1's range at version"));
  EXPECT_TRUE(faulty.log().contains("backup server 0 serves its range from version"));
  EXPECT_TRUE(faulty.log().contains("ps server 0: lost the connection to backup server 1"));
  EXPECT_FALSE(faulty.log().contains("waiting for its replacement"));
  testing::expect_bit_identical(taken_over, reference);
}

TEST(PsFailover, ABackupTakesOverAtAVersionsCloseBitIdenticalWithMomentum) {
  expect_takeover_bit_identical(momentum(), Death::kAtClose, 4);
}

TEST(PsFailover, ABackupTakesOverAtAVersionsCloseBitIdenticalWithAdam) {
  expect_takeover_bit_identical(adam(), Death::kAtClose, 6);
}

TEST(PsFailover, ASigkilledServerProcessDuringAPushIsTakenOverBitIdenticalWithMomentum) {
  expect_takeover_bit_identical(momentum(), Death::kSigkillAtClose, 5);
}

TEST(PsFailover, ASigkilledServerProcessDuringAPushIsTakenOverBitIdenticalWithAdam) {
  expect_takeover_bit_identical(adam(), Death::kSigkillAtClose, 7);
}

TEST(PsFailover, ASigkilledServerProcessBetweenVersionsIsTakenOverBitIdenticalWithMomentum) {
  expect_takeover_bit_identical(momentum(), Death::kSigkillBetweenVersions, 3);
}

TEST(PsFailover, ASigkilledServerProcessBetweenVersionsIsTakenOverBitIdenticalWithAdam) {
  expect_takeover_bit_identical(adam(), Death::kSigkillBetweenVersions, 4);
}

TEST(PsFailover, TheLateReplacementRetiresAndTheRangeStaysWithTheBackup) {
  const std::vector<float> reference = FailoverJob(momentum(), Death::kNone, 0).train();
  FailoverJob faulty(momentum(), Death::kAtClose, 3);
  const std::vector<float> taken_over = faulty.train(6);
  EXPECT_TRUE(faulty.log().contains("ps server 1: replacement retires: backup server 0 took"));
  EXPECT_FALSE(faulty.log().contains("replacement took its shard"));
  testing::expect_bit_identical(taken_over, reference);
}

// Server 0 alone, backing up server 1 (whose endpoint nobody binds); the
// test plays server 1 and worker 0 on raw sockets.
class LoneBackup {
 public:
  LoneBackup() : auth_("failover-test", "s3cret") {
    ServerOptions o;
    o.num_servers = kServers;
    o.num_workers = kWorkers;
    o.bind_endpoint = "ipc://" + dir_.file("server-0");
    o.consistency = Consistency::kSync;
    o.replicas = 1;
    server_ = std::make_unique<Server>(o, auth_, log_.logger());
    server_->set_server_endpoints({o.bind_endpoint, "ipc://" + dir_.file("server-1")});
    serving_ = std::jthread([this](std::stop_token stop) { server_->run(stop); });
    peer_.emplace(o.bind_endpoint, auth_);
  }
  ~LoneBackup() {
    serving_.request_stop();
    serving_.join();
  }

  // As server 1: its state at `version` (4 dense floats).
  ReplicaAck send_state(uint64_t version) {
    ReplicaState state;
    state.primary = 1;
    state.version = version;
    const std::vector<float> values(4, 0.5f);
    DenseShard(values, ServerOptions{}.optimizer).export_state(state.state);
    const auto ack = std::get<ReplicaAck>(ask(encode_replica(state), 1));
    EXPECT_EQ(ack.error, "");
    return ack;
  }
  // As server 1: an update from `base` to `base + 1` (the copy misses the
  // versions between).
  ReplicaAck send_update(uint64_t base) {
    ReplicaUpdate update;
    update.primary = 1;
    update.base_version = base;
    update.new_version = base + 1;
    return std::get<ReplicaAck>(ask(encode_replica(update), 1));
  }
  // As worker 0 (from `sender`): a takeover request of server 1's range.
  void send_takeover(uint64_t worker_version, uint32_t sender) {
    ReplicaTakeover t;
    t.primary = 1;
    t.worker = 0;
    t.version = worker_version;
    peer_->send_payload(encode_replica(t), sender);
  }
  TakeoverReply takeover(uint64_t worker_version) {
    send_takeover(worker_version, worker_rank(kServers, 0));
    return std::get<TakeoverReply>(decode_replica(peer_->receive_payload()));
  }
  CapturingLog& log() { return log_; }
  // As server 1's replacement: asks for the copy.
  ReplicaMessage fetch() {
    ReplicaFetch f;
    f.primary = 1;
    return ask(encode_replica(f), 1);
  }

 private:
  ReplicaMessage ask(const std::vector<std::byte>& payload, uint32_t sender) {
    peer_->send_payload(payload, sender);
    return decode_replica(peer_->receive_payload());
  }

  dtrain::testing::TempDir dir_;
  CapturingLog log_;
  comm::JobAuth auth_;
  std::unique_ptr<Server> server_;
  std::jthread serving_;
  std::optional<testing::RawPeer> peer_;
};

TEST(PsFailover, ABackupWithoutACopyDoesNotTakeOver) {
  LoneBackup backup;
  const TakeoverReply r = backup.takeover(0);
  EXPECT_EQ(r.status, TakeoverReply::Status::kRefused);
  EXPECT_NE(r.error.find("holds no copy of server 1's range"), std::string::npos) << r.error;
}

TEST(PsFailover, ALaggingCopyIsNotPromoted) {
  LoneBackup backup;
  ASSERT_EQ(backup.send_state(3).status, ReplicaAck::Status::kOk);
  // The primary shipped version 6; this copy missed 4..6.
  ASSERT_EQ(backup.send_update(5).status, ReplicaAck::Status::kNeedState);
  const TakeoverReply r = backup.takeover(3);
  EXPECT_EQ(r.status, TakeoverReply::Status::kRefused);
  EXPECT_EQ(r.version, 3u);
  EXPECT_NE(r.error.find("its copy is at version 3, behind its primary (worker 0 pulled "
                         "version 3, server 1 shipped version 6)"),
            std::string::npos)
      << r.error;
}

TEST(PsFailover, ACopyOlderThanTheWorkersVersionIsNotPromoted) {
  LoneBackup backup;
  ASSERT_EQ(backup.send_state(3).status, ReplicaAck::Status::kOk);
  const TakeoverReply r = backup.takeover(4);
  EXPECT_EQ(r.status, TakeoverReply::Status::kRefused);
  EXPECT_NE(r.error.find("a lagging copy is not promoted"), std::string::npos) << r.error;
}

TEST(PsFailover, OnceTakenOverTheRangeIsRefusedToTheReplacementAndToNewerWorkers) {
  LoneBackup backup;
  ASSERT_EQ(backup.send_state(3).status, ReplicaAck::Status::kOk);
  const TakeoverReply r = backup.takeover(3);
  ASSERT_EQ(r.status, TakeoverReply::Status::kServing) << r.error;
  EXPECT_EQ(r.version, 3u);
  EXPECT_NE(r.endpoint.find(".takeover-1"), std::string::npos) << r.endpoint;
  // Asked again: the same acting primary, not a second one.
  EXPECT_EQ(backup.takeover(2).endpoint, r.endpoint);
  EXPECT_EQ(backup.takeover(4).status, TakeoverReply::Status::kRefused);
  const ReplicaMessage answer = backup.fetch();
  const auto* ack = std::get_if<ReplicaAck>(&answer);
  ASSERT_NE(ack, nullptr);
  EXPECT_EQ(ack->status, ReplicaAck::Status::kTakenOver);
}

TEST(PsFailover, OnceTheReplacementTookTheCopyNoWorkerIsServedFromIt) {
  LoneBackup backup;
  ASSERT_EQ(backup.send_state(3).status, ReplicaAck::Status::kOk);
  const ReplicaMessage answer = backup.fetch();
  ASSERT_TRUE(std::holds_alternative<ReplicaState>(answer));
  const TakeoverReply r = backup.takeover(3);
  EXPECT_EQ(r.status, TakeoverReply::Status::kReplaced);
  EXPECT_NE(r.error.find("server 1's replacement took this server's copy"), std::string::npos)
      << r.error;
}

TEST(PsFailover, ATakeoverRequestClaimingAnotherWorkersRankIsDropped) {
  LoneBackup backup;
  ASSERT_EQ(backup.send_state(3).status, ReplicaAck::Status::kOk);
  // From server 1's rank, claiming worker 0, with a version the copy does not
  // hold: answered, it would be a refusal, and it would come first.
  backup.send_takeover(4, 1);
  const TakeoverReply r = backup.takeover(3);
  EXPECT_EQ(r.status, TakeoverReply::Status::kServing) << r.error;
  EXPECT_TRUE(backup.log().contains("a takeover request from rank 1 claiming to be worker 0"));
}

TEST(PsFailover, TakeoverMessagesRoundTripAndRejectUnknownStatuses) {
  TakeoverReply r;
  r.status = TakeoverReply::Status::kReplaced;
  r.backup = 2;
  r.primary = 1;
  r.version = 17;
  r.endpoint = "ipc:///x/server-2.takeover-1";
  r.error = "why";
  std::vector<std::byte> bytes = encode_replica(r);
  const auto back = std::get<TakeoverReply>(decode_replica(bytes));
  EXPECT_EQ(back.status, r.status);
  EXPECT_EQ(back.backup, 2u);
  EXPECT_EQ(back.primary, 1u);
  EXPECT_EQ(back.version, 17u);
  EXPECT_EQ(back.endpoint, r.endpoint);
  EXPECT_EQ(back.error, "why");
  bytes[12] = std::byte{3};  // the status, after the prefix and the term
  EXPECT_THROW(decode_replica(bytes), DataError);
  ReplicaTakeover t;
  t.primary = 1;
  t.worker = 3;
  t.version = 9;
  std::vector<std::byte> ask = encode_replica(t);
  const auto t2 = std::get<ReplicaTakeover>(decode_replica(ask));
  EXPECT_EQ(t2.worker, 3u);
  EXPECT_EQ(t2.version, 9u);
  ask.pop_back();
  EXPECT_THROW(decode_replica(ask), DataError);
}

}  // namespace
}  // namespace dtrain::ps
