// Fencing (docs/parameter-server.md "Fencing"): every request, reply and
// replica frame carries its range's term; a takeover raises it. A server that
// sees a higher term for its range stops serving it (answers kFenced, logs it
// once); a backup that took a range over refuses the old primary's updates
// (the ack names the new term, which fences the old primary); a worker
// refuses replies of an older term and re-routes to the range's holder.
//
// The job test takes server 0's range over while server 0 is alive and
// serving (as a worker that found it silent would): the update sequence of
// sync is deterministic, so an update lost, doubled or applied by both
// holders shows as different bits at the end.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <variant>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "ps/client.h"
#include "ps/replica_store.h"
#include "ps/replication_messages.h"
#include "ps/server.h"
#include "ps/shard_store.h"
#include "ps_test_util.h"
#include "testing/fault_fs.h"
#include "testing/optimizer_configs.h"

namespace dtrain::ps {
namespace {

using testing::CapturingLog;
using testing::RawPeer;

// How often `part` stands in the log.
size_t count_lines(CapturingLog& log, const std::string& part) {
  const std::string text = log.text();
  size_t n = 0, at = 0;
  while ((at = text.find(part, at)) != std::string::npos) {
    ++n;
    at += part.size();
  }
  return n;
}

TEST(PsFencing, ARequestOfAHigherTermStopsTheServerServingItsRangeLoggedOnce) {
  CapturingLog log;
  const comm::JobAuth auth("ps-test-job", "s3cret");
  ServerOptions o;
  o.num_workers = 1;
  o.consistency = Consistency::kSync;
  Server server(o, auth, log.logger());
  std::jthread serving([&](std::stop_token stop) { server.run(stop); });
  RawPeer peer(server.endpoint(), auth);
  Message init;
  init.kind = Kind::kInit;
  init.dense = {{"w", {2}}};
  init.floats = {1, 2};
  const Message joined = peer.request(init, 1, 1);
  ASSERT_EQ(joined.status, ReplyStatus::kOk) << joined.error;
  EXPECT_EQ(joined.term, 0u);
  Message pull;
  pull.kind = Kind::kPull;
  pull.term = 2;  // a worker that learned of a takeover at term 2
  const Message fenced = peer.request(pull, 1, 2);
  ASSERT_EQ(fenced.status, ReplyStatus::kFenced);
  EXPECT_EQ(fenced.term, 2u);
  EXPECT_EQ(fenced.error,
            "server 0 stopped serving range 0 (it held it at term 0): worker 0's pull request "
            "carries term 2, another server took the range over");
  // From then on every request is refused so, whatever its term, and
  // nothing changes: a push of term 0 is not applied.
  Message push;
  push.kind = Kind::kPush;
  push.samples = 1;
  // Refused before it is checked: an invalid push (no gradient) is fenced too.
  EXPECT_EQ(peer.request(push, 1, 3).status, ReplyStatus::kFenced);
  push.lr = 1.0f;
  push.floats = {1, 1};
  EXPECT_EQ(peer.request(push, 1, 4).status, ReplyStatus::kFenced);
  pull.term = 0;
  EXPECT_EQ(peer.request(pull, 1, 5).status, ReplyStatus::kFenced);
  serving.request_stop();
  serving.join();
  EXPECT_EQ(server.stats().version, 0u);
  EXPECT_EQ(server.state_dict().at("dense.values").to_vector(), (std::vector<float>{1, 2}));
  EXPECT_EQ(count_lines(log, "stopped serving range 0"), 1u) << log.text();
}

TEST(PsFencing, ABackupRefusesUpdatesAndStatesOfAnOlderTermNamingTheNewOne) {
  const optim::OptimizerConfig sgd;
  ReplicaStore store(1, 0, sgd);
  ReplicaState state;
  state.primary = 0;
  DenseShard(std::vector<float>{3.0f, 4.0f}, sgd).export_state(state.state);
  ASSERT_EQ(store.load(state).status, ReplicaAck::Status::kOk);
  EXPECT_EQ(store.term(0), 0u);
  store.raise_term(0, 1);  // this server took range 0 over at term 1
  ReplicaUpdate u;
  u.primary = 0;
  u.base_version = 0;
  u.new_version = 1;
  u.ops.push_back({ReplicaOp::Kind::kDenseApply, 0, 1.0f, {}, {1.0f, 1.0f}});
  const ReplicaAck refused = store.apply(u);
  EXPECT_EQ(refused.status, ReplicaAck::Status::kError);
  EXPECT_EQ(refused.term, 1u);
  EXPECT_EQ(refused.error,
            "server 1 refused server 0's update of term 0: the range is at term 1 (taken over)");
  EXPECT_EQ(store.version(0), 0u);  // nothing applied
  EXPECT_EQ(store.newest_seen(0), 0u);
  EXPECT_EQ(store.load(state).status, ReplicaAck::Status::kError);
  u.term = 1;
  EXPECT_EQ(store.apply(u).status, ReplicaAck::Status::kOk);
  EXPECT_EQ(store.state(0)->term, 1u);
}

TEST(PsFencing, ReplicaFramesCarryTheirTermAndATruncatedTermIsRefused) {
  ReplicaUpdate u;
  u.term = 5;
  u.primary = 1;
  const auto bytes = encode_replica(u);
  EXPECT_EQ(std::get<ReplicaUpdate>(decode_replica(bytes)).term, 5u);
  for (size_t cut = 4; cut < 12; ++cut) {
    EXPECT_THROW(decode_replica(std::span(bytes).first(cut)), DataError) << cut;
  }
  ReplicaTakeover ask;
  ask.term = 3;
  ask.primary = 2;
  EXPECT_EQ(std::get<ReplicaTakeover>(decode_replica(encode_replica(ask))).term, 3u);
  TakeoverReply answer;
  answer.term = 4;
  EXPECT_EQ(std::get<TakeoverReply>(decode_replica(encode_replica(answer))).term, 4u);
  ReplicaAck ack;
  ack.term = 6;
  EXPECT_EQ(std::get<ReplicaAck>(decode_replica(encode_replica(ack))).term, 6u);
}

// A worker that knows range 0 at term 2 refuses a reply of term 1 for it
// (a stale holder's) and takes the next one of term 2: a server of the test
// on a raw ROUTER answers the init at term 2, then each pull twice, first
// at term 1 (refused, logged), then at term 2 (taken).
TEST(PsFencing, AWorkerRefusesAReplyOfAnOlderTermNamingBoth) {
  CapturingLog log;
  const comm::JobAuth auth("ps-test-job", "s3cret");
  dtrain::testing::TempDir dir;
  comm::wire::FramedSocketOptions so;
  so.name = "fake ps server 0";
  so.rank = server_rank(0);
  so.limits.job_id = auth.job_id();
  so.limits.world_size = comm::wire::kAnyReceiver;
  so.limits.receiver = server_rank(0);
  zmq::context_t context(1);
  comm::wire::FramedSocket server(context, comm::wire::FramedSocket::Role::kRouter,
                                  "ipc://" + dir.file("server-0"), so, auth, log.logger());
  std::jthread fake([&](std::stop_token stop) {
    while (!stop.stop_requested()) {
      zmq::pollitem_t item = server.poll_item();
      comm::wire::poll_until(std::span(&item, 1), Deadline::after(std::chrono::milliseconds(50)));
      while (std::optional<comm::wire::Frame> frame = server.try_receive()) {
        const Message request = decode_message(frame->payload());
        if (request.kind == Kind::kHeartbeat) continue;
        Message reply;
        reply.kind = Kind::kReply;
        reply.reply_to = request.kind;
        reply.request_id = request.request_id;
        reply.floats = {5.0f, 6.0f};
        comm::wire::FrameHeader h;
        h.type = comm::wire::MessageType::kData;
        h.receiver = frame->header.sender;
        h.sequence = request.request_id;
        for (uint64_t term :
             request.kind == Kind::kInit ? std::vector<uint64_t>{2} : std::vector<uint64_t>{1, 2}) {
          reply.term = term;
          reply.floats[0] = static_cast<float>(term);
          server.send(frame->identity, h, encode_message(reply));
        }
      }
    }
  });
  ClientOptions o;
  o.num_workers = 1;
  o.server_endpoints = {"ipc://" + dir.file("server-0")};
  o.timeout = testing::kGenerous;
  Client client(o, auth, log.logger());
  StateDict spec;
  spec.insert("w", Tensor::zeros({2}));
  client.init(spec, {});
  std::vector<Tensor> params{Tensor::zeros({2})};
  client.pull(params, 0);
  EXPECT_EQ(params[0].to_vector(), (std::vector<float>{2.0f, 6.0f}));  // term 2's reply
  EXPECT_TRUE(
      log.contains("ps worker 0: refused a reply: server 0 answered for range 0 at term "
                   "1, the range is at term 2 (taken over by server 0)"))
      << log.text();
}

constexpr int kServers = 2, kWorkers = 2;
constexpr uint64_t kSteps = 8;

// Two servers, each the other's backup, two sync workers. With `take_at`,
// worker 0, at that version and before its push, asks server 1 (on a socket
// of its own, as its client's takeover does) to take server 0's range over
// while server 0 serves on: server 1 serves it at term 1; server 0 learns so
// from the ack to its next update (or from the worker's notice) and refuses
// the rest; the workers re-route through the existing takeover path.
std::vector<float> train(const optim::OptimizerConfig& optimizer, std::optional<uint64_t> take_at,
                         CapturingLog& log) {
  dtrain::testing::TempDir dir;
  const comm::JobAuth auth("fencing-test", "s3cret");
  std::vector<std::string> endpoints;
  for (int s = 0; s < kServers; ++s)
    endpoints.push_back("ipc://" + dir.file("server-" + std::to_string(s)));
  std::vector<std::unique_ptr<Server>> servers;
  std::vector<std::jthread> threads;
  for (int s = 0; s < kServers; ++s) {
    servers.push_back(std::make_unique<Server>(
        testing::replicated_server_options(s, kServers, kWorkers, endpoints, optimizer, 1), auth,
        log.logger()));
    servers.back()->set_server_endpoints(endpoints);
  }
  for (auto& server : servers) {
    threads.emplace_back([raw = server.get()](std::stop_token stop) { raw->run(stop); });
  }
  std::vector<float> out = testing::run_sync_workers(
      kWorkers, endpoints, 1, auth, log.logger(),
      [&](Client& client, int w, std::vector<Tensor>& params) {
        testing::train_two_tensors(client, w, params, kSteps, [&](uint64_t version) {
          if (w != 0 || !take_at || version != *take_at) return;
          RawPeer peer(endpoints[1], auth);
          ReplicaTakeover ask;
          ask.primary = 0;
          ask.worker = 0;
          ask.version = version;
          peer.send_payload(encode_replica(ask), worker_rank(kServers, 0), server_rank(1));
          const auto answer = decode_replica(peer.receive_payload());
          const auto* reply = std::get_if<TakeoverReply>(&answer);
          ASSERT_NE(reply, nullptr);
          ASSERT_EQ(reply->status, TakeoverReply::Status::kServing) << reply->error;
          EXPECT_EQ(reply->term, 1u);
        });
      });
  for (auto& t : threads) t.request_stop();
  threads.clear();  // joined
  return out;
}

void expect_fenced_takeover_bit_identical(const optim::OptimizerConfig& optimizer, uint64_t at) {
  CapturingLog clean;
  const std::vector<float> reference = train(optimizer, std::nullopt, clean);
  EXPECT_FALSE(clean.contains("at term")) << clean.text();
  CapturingLog log;
  const std::vector<float> fenced = train(optimizer, at, log);
  EXPECT_TRUE(log.contains(
      fmt::format("ps server 1: took over server 0's range at version {}, term 1", at)))
      << log.text();
  EXPECT_EQ(
      count_lines(log, "ps server 0: server 0 stopped serving range 0 (it held it at term 0)"), 1u)
      << log.text();
  // Each worker was refused by the old primary and re-routed to the holder.
  for (int w = 0; w < kWorkers; ++w) {
    EXPECT_TRUE(log.contains(fmt::format("ps worker {}: server 0 stopped serving range 0", w)))
        << log.text();
    EXPECT_TRUE(log.contains(fmt::format(
        "ps worker {}: lost server 0 during pull; backup server 1 serves its range from version "
        "{} at term 1",
        w, at)))
        << log.text();
  }
  testing::expect_bit_identical(fenced, reference);
}

TEST(PsFencing, APrimaryTakenOverWhileAliveIsFencedAndSyncEndsBitIdenticalWithMomentum) {
  expect_fenced_takeover_bit_identical(dtrain::testing::momentum(), 3);
}

TEST(PsFencing, APrimaryTakenOverWhileAliveIsFencedAndSyncEndsBitIdenticalWithAdam) {
  expect_fenced_takeover_bit_identical(dtrain::testing::adam(), 5);
}

}  // namespace
}  // namespace dtrain::ps
