// Replicated server state (replication.h, replica_store.h): servers on
// threads over tcp loopback, workers as ps::Clients or hand-driven peers.
#include "ps/replication.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <variant>

#include "core/error.h"
#include "core/rng.h"
#include "ps/replica_store.h"
#include "ps/replication_messages.h"
#include "ps_test_util.h"
#include "testing/fault_fs.h"

namespace dtrain::ps {
namespace {

using testing::kGenerous;
using testing::PsJob;
using testing::RawPeer;

// Every tensor of `a` equals `b`'s bit for bit, and the versions agree.
void expect_bit_identical(const StateDict& a, const StateDict& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(a.metadata().at("version"), b.metadata().at("version")) << what;
  for (const auto& [name, tensor] : a) {
    ASSERT_TRUE(b.contains(name)) << what << ": " << name;
    const Tensor& other = b.at(name);
    ASSERT_EQ(tensor.shape(), other.shape()) << what << ": " << name;
    EXPECT_EQ(std::memcmp(tensor.data(), other.data(), sizeof(float) * tensor.numel()), 0)
        << what << ": " << name << " differs";
  }
}

std::vector<float> random_values(Rng& rng, size_t n) {
  std::vector<float> out(n);
  for (float& x : out) x = rng.normal(0.0f, 0.1f);
  return out;
}

// Two workers train `steps` sync steps against `job`: each pulls its rows
// (new keys every step, so rows are created between versions), pushes row
// gradients and a dense gradient drawn from its own seeded Rng.
void train_sync(PsJob& job, int steps) {
  const std::vector<SparseTableSpec> tables{{"emb", 3, 0.1f}};
  std::vector<std::jthread> workers;
  for (int w = 0; w < 2; ++w) {
    workers.emplace_back([&job, &tables, w, steps] {
      auto c = job.client(w);
      StateDict dense;
      dense.insert("fc.weight", Tensor::full({7, 5}, 0.25f));
      dense.insert("fc.bias", Tensor::zeros({7}));
      c->init(dense, tables);
      std::vector<Tensor> params{Tensor::zeros({7, 5}), Tensor::zeros({7})};
      Rng rng(100 + static_cast<uint64_t>(w));
      for (int v = 0; v < steps; ++v) {
        c->pull(params, static_cast<uint64_t>(v));
        const std::vector<uint64_t> keys{rng.below(40), rng.below(40), 1000 + rng.below(1000)};
        Tensor rows = Tensor::zeros({3, 3});
        c->pull_rows(0, keys, rows);
        c->push_rows(0, keys, Tensor::from_vector(random_values(rng, 9), {3, 3}), 0.1f,
                     static_cast<uint64_t>(v));
        const std::vector<Tensor> grads{Tensor::from_vector(random_values(rng, 35), {7, 5}),
                                        Tensor::from_vector(random_values(rng, 7), {7})};
        c->push(grads, 4 + w, 0.05f, static_cast<uint64_t>(v));
      }
      c->pull(params, static_cast<uint64_t>(steps));
      c->finish();
    });
  }
}

void expect_backups_match(const std::string& optimizer) {
  ServerOptions options;
  options.replicas = 1;
  options.seed = 9;
  options.optimizer.type = optimizer;
  options.optimizer.momentum = optimizer == "sgd" ? 0.9f : 0.0f;
  PsJob job(2, 2, options);
  train_sync(job, 12);
  job.join();  // the servers end when both workers said goodbye
  for (int primary = 0; primary < 2; ++primary) {
    const StateDict own = job.server(primary).state_dict();
    EXPECT_EQ(own.metadata().at("version"), "12");
    EXPECT_TRUE(own.contains("sparse.emb.keys"));
    expect_bit_identical(own, job.server(1 - primary).replica_state_dict(primary),
                         fmt::format("{}: server {}'s range on its backup", optimizer, primary));
  }
}

TEST(Replication, BackupIsBitIdenticalWithSgdMomentum) { expect_backups_match("sgd"); }

TEST(Replication, BackupIsBitIdenticalWithAdam) { expect_backups_match("adam"); }

TEST(Replication, BackupsAreTheNextServersInRingOrder) {
  EXPECT_EQ(backups_of(2, 3, 2), (std::vector<int>{0, 1}));
  EXPECT_TRUE(backs_up(0, 2, 3, 1));
  EXPECT_FALSE(backs_up(1, 2, 3, 1));
  EXPECT_FALSE(backs_up(2, 2, 3, 2));
}

TEST(Replication, OptionsAreValidated) {
  testing::CapturingLog log;
  const comm::JobAuth auth("ps-test-job", "s3cret");
  ServerOptions o;
  o.num_servers = 2;
  o.replicas = 2;
  EXPECT_THROW(Server(o, auth, log.logger()), ConfigError);
  o.replicas = 1;
  o.consistency = Consistency::kAsync;
  EXPECT_THROW(Server(o, auth, log.logger()), ConfigError);
  o.consistency = Consistency::kSync;
  Server server(o, auth, log.logger());
  EXPECT_THROW(server.set_server_endpoints({server.endpoint()}), UsageError);
}

TEST(ReplicationMessages, RoundTripAndRefuseTruncation) {
  ReplicaUpdate u;
  u.primary = 1;
  u.base_version = 4;
  u.new_version = 5;
  u.ops.push_back({ReplicaOp::Kind::kRowsTouch, 0, 0.0f, {3, 9}, {}});
  u.ops.push_back({ReplicaOp::Kind::kDenseApply, 0, 0.5f, {}, {1.0f, -2.0f}});
  const std::vector<std::byte> bytes = encode_replica(u);
  ASSERT_TRUE(is_replication_payload(bytes));
  const auto back = std::get<ReplicaUpdate>(decode_replica(bytes));
  EXPECT_EQ(back.new_version, 5u);
  ASSERT_EQ(back.ops.size(), 2u);
  EXPECT_EQ(back.ops[0].keys, (std::vector<uint64_t>{3, 9}));
  EXPECT_EQ(back.ops[1].floats, (std::vector<float>{1.0f, -2.0f}));
  for (size_t cut : {size_t{1}, size_t{10}, bytes.size() - 1}) {
    EXPECT_THROW(decode_replica(std::span(bytes).first(cut)), DataError) << cut;
  }
  ReplicaAck ack;
  ack.status = ReplicaAck::Status::kNeedState;
  ack.error = "behind";
  const auto a = std::get<ReplicaAck>(decode_replica(encode_replica(ack)));
  EXPECT_EQ(a.status, ReplicaAck::Status::kNeedState);
  EXPECT_EQ(a.error, "behind");
}

TEST(ReplicaStore, AsksForTheStateWhenAnUpdateDoesNotFollowItsCopy) {
  optim::OptimizerConfig sgd;
  ReplicaStore store(1, 0, sgd);
  ReplicaUpdate u;
  u.primary = 0;
  u.base_version = 0;
  u.new_version = 1;
  u.ops.push_back({ReplicaOp::Kind::kDenseApply, 0, 1.0f, {}, {1.0f, 1.0f}});
  EXPECT_EQ(store.apply(u).status, ReplicaAck::Status::kNeedState);  // no copy yet
  ReplicaState state;
  state.primary = 0;
  state.version = 0;
  const std::vector<float> initial{3.0f, 4.0f};
  DenseShard(initial, sgd).export_state(state.state);
  ASSERT_EQ(store.load(state).status, ReplicaAck::Status::kOk);
  EXPECT_EQ(store.apply(u).version, 1u);
  EXPECT_EQ(store.apply(u).status, ReplicaAck::Status::kOk);  // a resend: acknowledged again
  EXPECT_EQ(store.state_dict(0).at("dense.values").span()[0], 2.0f);
  u.base_version = 3;
  u.new_version = 4;
  EXPECT_EQ(store.apply(u).status, ReplicaAck::Status::kNeedState);  // it missed 1..3
  u.base_version = 1;
  u.new_version = 2;
  u.ops[0].floats.push_back(0.0f);  // three floats for a range of two
  EXPECT_EQ(store.apply(u).status, ReplicaAck::Status::kError);
  EXPECT_EQ(store.version(0), 1u);
}

// Server 0 of a 2-server job, driven by hand as worker 0; its backup,
// server 1, is bound but not serving at first.
TEST(Replication, LaggingBackupIsWaitedForWithADeadlineThenCatchesUpByStateTransfer) {
  testing::CapturingLog log;
  const comm::JobAuth auth("ps-test-job", "s3cret");
  ServerOptions o;
  o.num_servers = 2;
  o.num_workers = 1;
  o.replicas = 1;
  o.replica_timeout = std::chrono::milliseconds(300);
  o.replica_resend_interval = std::chrono::milliseconds(50);
  o.optimizer.momentum = 0.5f;
  Server primary(o, auth, log.logger());
  o.server = 1;
  Server backup(o, auth, log.logger());
  const std::vector<std::string> endpoints{primary.endpoint(), backup.endpoint()};
  primary.set_server_endpoints(endpoints);
  backup.set_server_endpoints(endpoints);
  std::jthread serving([&](std::stop_token stop) { primary.run(stop); });

  RawPeer peer(primary.endpoint(), auth);
  Message init;
  init.kind = Kind::kInit;
  init.dense = {{"w", {4}}};
  init.floats = {1, 2};  // server 0 holds [0, 2)
  ASSERT_EQ(peer.request(init, 2, 1).status, ReplyStatus::kOk);
  Message push;
  push.kind = Kind::kPush;
  push.samples = 1;
  push.lr = 0.5f;
  push.floats = {1, 1};
  ASSERT_EQ(peer.request(push, 2, 2).status, ReplyStatus::kOk);
  Message pull;
  pull.kind = Kind::kPull;
  pull.min_version = 1;
  pull.wait_ms = static_cast<uint32_t>(kGenerous.count());
  // Answered once the backup is declared lagging (no timing is asserted).
  const Message reply = peer.request(pull, 2, 3);
  ASSERT_EQ(reply.status, ReplyStatus::kOk) << reply.error;
  EXPECT_EQ(reply.floats, (std::vector<float>{0.5f, 1.5f}));
  // Declared lagging at version 1, or already at version 0 (the initial
  // state) when this thread took longer than the deadline to push: a loaded
  // machine decides which, so either is right.
  EXPECT_TRUE(log.contains("backup server 1 has not acknowledged version 1 of server 0's range "
                           "(dense [0, 2) and its sparse rows) within 300 ms") ||
              log.contains("backup server 1 has not acknowledged version 0 of server 0's range "
                           "(dense [0, 2) and its sparse rows) within 300 ms"))
      << log.text();

  std::jthread backup_serving([&](std::stop_token stop) { backup.run(stop); });
  const Deadline deadline = Deadline::after(kGenerous);
  while (!log.contains("backup server 1 caught up") && !deadline.expired()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling a log, not syncing
  }
  backup_serving.request_stop();
  backup_serving.join();
  serving.request_stop();
  serving.join();
  EXPECT_TRUE(log.contains("ps server 1: holds server 0's state from version"));
  expect_bit_identical(primary.state_dict(), backup.replica_state_dict(0), "caught-up copy");
}

// A replacement of server 0 fetches its range from server 1's copy. The copy
// is larger than 1 MiB (a regression: the replication socket once took only
// 1 MiB frames, and the replacement fell back to fresh optimizer state).
TEST(Replication, AReplacementTakesALargeRangeFromItsBackupsCopy) {
  testing::CapturingLog log;
  const comm::JobAuth auth("ps-test-job", "s3cret");
  dtrain::testing::TempDir dir;
  const std::vector<std::string> endpoints{"ipc://" + dir.file("server-0"),
                                           "ipc://" + dir.file("server-1")};
  ServerOptions o;
  o.num_servers = 2;
  o.num_workers = 1;
  o.replicas = 1;
  o.optimizer.momentum = 0.9f;
  constexpr int64_t kFloats = 400000;  // server 0 holds 200000: 1.6 MB with its momentum
  auto make = [&](int s, bool replacement) {
    ServerOptions so = o;
    so.server = s;
    so.bind_endpoint = endpoints[static_cast<size_t>(s)];
    so.replacement = replacement;
    auto server = std::make_unique<Server>(so, auth, log.logger());
    server->set_server_endpoints(endpoints);
    return server;
  };
  auto backup = make(1, false);
  std::jthread backup_serving([&](std::stop_token stop) { backup->run(stop); });
  StateDict before;
  {
    auto primary = make(0, false);
    std::jthread serving([&](std::stop_token stop) { primary->run(stop); });
    RawPeer peer(endpoints[0], auth);
    Message init;
    init.kind = Kind::kInit;
    init.dense = {{"w", {kFloats}}};
    init.floats.assign(kFloats / 2, 1.0f);
    ASSERT_EQ(peer.request(init, 2, 1).status, ReplyStatus::kOk);
    Message push;
    push.kind = Kind::kPush;
    push.samples = 1;
    push.lr = 0.5f;
    push.floats.assign(kFloats / 2, 0.25f);
    ASSERT_EQ(peer.request(push, 2, 2).status, ReplyStatus::kOk);
    Message pull;
    pull.kind = Kind::kPull;
    pull.min_version = 1;
    pull.wait_ms = static_cast<uint32_t>(kGenerous.count());
    ASSERT_EQ(peer.request(pull, 2, 3).status, ReplyStatus::kOk);  // the backup holds version 1
    serving.request_stop();
    serving.join();
    before = primary->state_dict();
  }
  auto replacement = make(0, true);
  std::jthread serving([&](std::stop_token stop) { replacement->run(stop); });
  RawPeer peer(endpoints[0], auth);
  Message init;
  init.kind = Kind::kInit;
  init.version = 1;
  init.dense = {{"w", {kFloats}}};
  init.floats.assign(kFloats / 2, 0.0f);  // not used: the copy's values are
  ASSERT_EQ(peer.request(init, 2, 1).status, ReplyStatus::kOk);
  serving.request_stop();
  serving.join();
  backup_serving.request_stop();
  backup_serving.join();
  EXPECT_TRUE(
      log.contains("ps server 0: replacement took its shard from its backup's copy "
                   "(version 1"));
  expect_bit_identical(before, replacement->state_dict(), "the replacement's range");
}

}  // namespace
}  // namespace dtrain::ps
