// Hostile and invalid input, dead and rejoining workers, shutdown.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "core/crc32c.h"
#include "core/rng.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;
using testing::RawPeer;

StateDict small_model() {
  StateDict model;
  model.insert("w", Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}));
  model.insert("b", Tensor::from_vector({0.5f, -0.5f}, {2}));
  return model;
}

std::vector<Tensor> fresh(const StateDict& model) {
  std::vector<Tensor> out;
  for (const auto& [name, t] : model) out.push_back(Tensor::zeros(t.shape()));
  return out;
}

void expect_same_state(const PsState& a, const PsState& b) {
  EXPECT_EQ(a.version, b.version);
  ASSERT_EQ(a.dense.size(), b.dense.size());
  for (const auto& [name, t] : a.dense)
    EXPECT_EQ(t.to_vector(), b.dense.at(name).to_vector()) << name;
  ASSERT_EQ(a.optimizer.size(), b.optimizer.size());
  for (const auto& [name, t] : a.optimizer) {
    EXPECT_EQ(t.to_vector(), b.optimizer.at(name).to_vector()) << name;
  }
  EXPECT_EQ(a.optimizer.metadata(), b.optimizer.metadata());
  ASSERT_EQ(a.sparse.size(), b.sparse.size());
  for (const auto& [name, t] : a.sparse)
    EXPECT_EQ(t.to_vector(), b.sparse.at(name).to_vector()) << name;
}

Message stats_request(uint32_t worker) {
  Message m;
  m.kind = Kind::kStats;
  m.worker = worker;
  return m;
}

TEST(PsBadInput, InvalidRequestsGetAnErrorNamingTheProblemAndChangeNothing) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.optimizer.momentum = 0.9f;
  PsJob job(1, 2, options);
  auto c0 = job.client(0);
  auto c1 = job.client(1);
  c0->init(small_model(), {{"emb", 2, 0.1f}});
  c1->init(small_model(), {{"emb", 2, 0.1f}});
  Rng rng(2);
  std::vector<Tensor> grad;
  for (const auto& [name, t] : small_model())
    grad.push_back(dtrain::testing::normal_tensor(t.shape(), rng));
  c0->push(grad, 4, 0.1f, 0);
  const PsState before = c0->pull_state();
  const ServerStats stats_before = c0->stats(0);

  dtrain::testing::expect_error<CommError>(
      [&] { c0->push(grad, 4, 0.1f, 0); },
      "ps push with rank 0: server 0 refused: duplicate push from worker 0 for version 0");
  dtrain::testing::expect_error<CommError>(
      [&] { c1->push(grad, 4, 0.1f, 3); },
      "ps push with rank 0: server 0 refused: future push for version 3: server 0 is at version 0");
  dtrain::testing::expect_error<CommError>(
      [&] { c1->init(StateDict{}, {}); },
      "ps init with rank 0: server 0 refused: init lists 0 dense tensors; the job was "
      "initialised with 2");

  RawPeer raw(job.endpoints()[0], job.auth());
  Message push;
  push.kind = Kind::kPush;
  push.worker = 1;
  push.samples = 1;
  push.lr = 0.1f;
  push.floats = {1, 2, 3};
  Message reply = raw.request(push, 1, 101);
  EXPECT_EQ(reply.status, ReplyStatus::kError);
  EXPECT_EQ(reply.request_id, 101u);
  EXPECT_EQ(reply.error, "gradient has 3 floats; server 0 holds 8 (range [0, 8))");

  Message rows;
  rows.kind = Kind::kPullRows;
  rows.worker = 1;
  rows.table = 3;
  rows.keys = {1};
  EXPECT_EQ(raw.request(rows, 1, 102).error, "unknown table 3; the job has 1 tables");
  rows.table = 0;
  rows.kind = Kind::kPushRows;
  rows.lr = 0.1f;
  rows.floats = {1, 2, 3};
  EXPECT_EQ(raw.request(rows, 1, 103).error, "table 'emb': 3 floats for 1 keys of dim 2");

  // Non-finite updates from anyone (issue #18 item 4: one spoofed NaN push
  // poisoned the model) are refused naming the sender.
  push.floats.assign(8, 0.5f);
  push.floats[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(raw.request(push, 1, 106).error,
            "push from worker 1: value 5 of 8 is nan; nothing applied");
  // (A non-finite learning rate does not even decode: see PsMessages.)
  rows.floats = {1, -std::numeric_limits<float>::infinity()};
  EXPECT_EQ(raw.request(rows, 1, 107).error,
            "push_rows from worker 1: value 1 of 2 is -inf; nothing applied");

  Message stranger = stats_request(7);
  stranger.request_id = 104;
  raw.send(stranger, worker_rank(1, 7));
  EXPECT_EQ(raw.receive().error, "worker index 7 out of range [0, 2)");
  Message impostor = stats_request(0);  // claims worker 0 from worker 1's rank
  impostor.request_id = 105;
  raw.send(impostor, worker_rank(1, 1));
  EXPECT_EQ(raw.receive().error, "frame from wire rank 2 claims to be worker 0 (rank 1)");

  const PsState after = c0->pull_state();
  expect_same_state(before, after);
  const ServerStats stats_after = c0->stats(0);
  EXPECT_EQ(stats_after.version, stats_before.version);
  EXPECT_EQ(stats_after.pushes_applied, stats_before.pushes_applied);
  EXPECT_EQ(stats_after.sparse_rows, 0u);
  EXPECT_EQ(stats_after.requests_rejected, stats_before.requests_rejected + 10);
  EXPECT_TRUE(job.log().contains("ps server 0: rejected push from worker 0: duplicate push"));
  // The valid protocol still works: worker 1's push completes version 0.
  c1->push(grad, 2, 0.1f, 0);
  std::vector<Tensor> params = fresh(small_model());
  EXPECT_EQ(c0->pull(params, 1), 1u);
}

TEST(PsBadInput, GarbageAndUnauthenticatedFramesAreDroppedWithoutAReply) {
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  PsJob job(1, 1, options);
  auto c = job.client(0);
  c->init(small_model(), {});
  const PsState before = c->pull_state();
  RawPeer raw(job.endpoints()[0], job.auth());

  Rng rng(9);
  auto random_bytes = [&](size_t n) {
    std::vector<std::byte> out(n);
    for (auto& b : out) b = static_cast<std::byte>(rng.below(256));
    return out;
  };
  // A valid frame to corrupt: a push of the right size.
  Message push;
  push.kind = Kind::kPush;
  push.samples = 1;
  push.lr = 1.0f;
  push.floats.assign(8, 100.0f);
  const std::vector<std::byte> payload = encode_message(push);
  comm::wire::FrameHeader h;
  h.sender = worker_rank(1, 0);
  h.receiver = 0;
  h.job_id = job.auth().job_id();
  const auto head = comm::wire::encode_header(h, payload, job.auth(), true);
  const std::vector<std::byte> head_bytes(head.begin(), head.end());

  raw.send_parts({random_bytes(40)});                    // one part
  raw.send_parts({random_bytes(88), random_bytes(16)});  // not a dtrain header
  auto truncated = payload;
  truncated.resize(payload.size() - 4);
  raw.send_parts({head_bytes, truncated});  // length disagrees
  auto flipped = payload;
  flipped[30] ^= std::byte{0x40};
  raw.send_parts({head_bytes, flipped});  // CRC / MAC mismatch
  const comm::JobAuth stranger("ps-test-job", "wrong secret");
  const auto forged = comm::wire::encode_header(h, payload, stranger, true);
  raw.send_parts({{forged.begin(), forged.end()}, payload});  // MAC with another secret
  Message garbage_kind = push;
  auto bad_payload = encode_message(garbage_kind);
  bad_payload[0] = std::byte{42};
  const auto bad_head = comm::wire::encode_header(h, bad_payload, job.auth(), true);
  raw.send_parts({{bad_head.begin(), bad_head.end()}, bad_payload});  // unknown ps kind

  // The stats reply is the first frame back: none of the above was answered.
  const Message reply = raw.request(stats_request(0), 1, 77);
  EXPECT_EQ(reply.request_id, 77u);
  EXPECT_EQ(reply.stats.frames_dropped, 6u);
  EXPECT_EQ(reply.stats.pushes_applied, 0u);
  expect_same_state(before, c->pull_state());
  EXPECT_TRUE(job.log().contains("ps server 0: dropped an inbound frame (1 so far): "));
}

TEST(PsBadInput, AClientWithoutTheJobSecretCannotPushOrInit) {
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  PsJob job(1, 1, options);
  const comm::JobAuth no_secret("ps-test-job", "");
  auto intruder = job.client(0, std::chrono::milliseconds(1500), &no_secret);
  EXPECT_THROW(intruder->init(small_model(), {}), TimeoutError);
  auto c = job.client(0);
  const ServerStats stats = c->stats(0);
  EXPECT_FALSE(stats.initialised);
  EXPECT_GE(stats.frames_dropped, 1u);
}

TEST(PsFailure, ADeadWorkerDoesNotStopSyncAndARestartedOneRejoins) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.heartbeat_timeout = std::chrono::milliseconds(1500);
  PsJob job(2, 2, options);
  const StateDict model = small_model();
  auto c0 = job.client(0);
  auto c1 = job.client(1);
  c0->init(model, {});
  c1->init(model, {});
  std::vector<Tensor> grad = fresh(model);
  for (Tensor& g : grad) g.span()[0] = 1.0f;
  c0->push(grad, 1, 0.1f, 0);
  c1->push(grad, 1, 0.1f, 0);
  c1.reset();  // dies: no goodbye, heartbeats stop
  c0->push(grad, 1, 0.1f, 1);
  std::vector<Tensor> params = fresh(model);
  EXPECT_EQ(c0->pull(params, 2), 2u);  // released once worker 1 is declared dead
  EXPECT_TRUE(job.log().contains("worker 1 declared dead at version 1: silent for"));
  EXPECT_EQ(c0->stats(0).workers[1], WorkerState::kDead);
  c0->push(grad, 1, 0.1f, 2);
  EXPECT_EQ(c0->pull(params, 3), 3u);  // alone now

  auto restarted = job.client(1);
  EXPECT_EQ(restarted->init(model, {}), 3u);
  EXPECT_EQ(restarted->joined_step(), 3u);  // where its trainer continues
  EXPECT_EQ(c0->joined_step(), 0u);         // it started the job
  std::vector<Tensor> rejoined = fresh(model);
  EXPECT_EQ(restarted->pull(rejoined, 3), 3u);
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_EQ(rejoined[i].to_vector(), params[i].to_vector());
  EXPECT_TRUE(job.log().contains("worker 1 rejoined at version 3"));
  // Both count again in version 3.
  c0->push(grad, 1, 0.1f, 3);
  restarted->push(grad, 1, 0.1f, 3);
  EXPECT_EQ(restarted->pull(params, 4), 4u);

  c0->finish();
  restarted->finish();
  job.join();  // the servers end by themselves once every worker said goodbye
  EXPECT_EQ(job.result(0).end, ServeEnd::kFinished);
  EXPECT_EQ(job.result(1).end, ServeEnd::kFinished);
  EXPECT_EQ(job.result(1).stats.version, 4u);
}

TEST(PsFailure, AWorkerRestartedAfterPushingIsNotCountedTwiceInAVersion) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  PsJob job(2, 2, options);
  const StateDict model = small_model();
  auto c0 = job.client(0);
  auto c1 = job.client(1);
  c0->init(model, {});
  c1->init(model, {});
  std::vector<Tensor> grad = fresh(model);
  for (Tensor& g : grad) g.span()[0] = 1.0f;
  c1->push(grad, 1, 0.1f, 0);
  c1.reset();  // dies after its push for version 0 went in
  auto restarted = job.client(1);
  EXPECT_EQ(restarted->init(model, {}), 0u);
  const PushResult again = restarted->push(grad, 1, 0.1f, 0);
  EXPECT_EQ(again.servers_dropped, 2);
  dtrain::testing::expect_error<CommError>(
      [&] { restarted->push(grad, 1, 0.1f, 0); },
      "ps push with rank 0: server 0 refused: duplicate push from worker 1 for version 0");
  c0->push(grad, 3, 0.1f, 0);
  std::vector<Tensor> params = fresh(model);
  EXPECT_EQ(restarted->pull(params, 1), 1u);
  // One update with the mean of the two pushes that went in: w[0] = 1 - 0.1 * 1.
  EXPECT_FLOAT_EQ(params[0].data()[0], 0.9f);
  EXPECT_EQ(c0->stats(0).pushes_applied, 2u);
}

TEST(PsFailure, ADeadWorkerThatComesBackIsToldTheJobWentOnWithoutIt) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.heartbeat_timeout = std::chrono::milliseconds(1000);
  PsJob job(1, 2, options);
  auto c0 = job.client(0);
  c0->init(small_model(), {});
  // Worker 1 never connects: after the timeout it is dead and version 0 completes without it.
  c0->push(fresh(small_model()), 1, 0.1f, 0);
  std::vector<Tensor> params = fresh(small_model());
  EXPECT_EQ(c0->pull(params, 1), 1u);
  RawPeer raw(job.endpoints()[0], job.auth());
  Message pull;
  pull.kind = Kind::kPull;
  pull.worker = 1;
  // A dead worker that comes back (it was stopped past the heartbeat
  // timeout) learns that the job went on without it: not an error.
  const Message reply = raw.request(pull, 1, 5);
  EXPECT_EQ(reply.status, ReplyStatus::kLeftOut);
  EXPECT_EQ(reply.error,
            "ps server 0 declared worker 1 dead (silent for more than the heartbeat timeout of "
            "1000 ms) and the job went on without it; it is at version 1");
}

TEST(PsFailure, AServerWhoseWorkersAllDiedEndsAfterTheRejoinWindowInsteadOfWaitingForever) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.heartbeat_timeout = std::chrono::milliseconds(300);
  options.join_timeout = std::chrono::milliseconds(400);
  PsJob job(2, 2, options);
  const StateDict model = small_model();
  auto c0 = job.client(0);
  auto c1 = job.client(1);
  c0->init(model, {});
  c1->init(model, {});
  c0->push(fresh(model), 1, 0.1f, 0);
  c1->push(fresh(model), 1, 0.1f, 0);
  std::vector<Tensor> params = fresh(model);
  EXPECT_EQ(c0->pull(params, 1), 1u);
  c0.reset();  // both die: no goodbye, heartbeats stop
  c1.reset();
  job.join();  // without the rule this waits forever (no stop is requested)
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(job.result(s).end, ServeEnd::kAbandoned) << "server " << s;
    EXPECT_EQ(job.result(s).stats.version, 1u);
  }
  EXPECT_TRUE(job.log().contains(
      "ps server 0: every worker has been dead for more than 400 ms (none finished, none "
      "rejoined) at version 1: nobody is left to serve; stopping"));
}

TEST(PsFailure, ServerStopsPromptlyAndAnswersParkedPulls) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  PsJob job(1, 2, options);
  auto c0 = job.client(0);
  c0->init(small_model(), {});
  std::vector<Tensor> params = fresh(small_model());
  std::jthread stopper([&] {
    // Stop once the pull below is parked.
    auto watcher = job.client(1);
    while (watcher->stats(0).parked_pulls == 0) {
    }
    job.stop();
  });
  c0->push(fresh(small_model()), 1, 0.1f, 0);
  dtrain::testing::expect_error<CommError>([&] { c0->pull(params, 1); },
                                           "ps pull with rank 0: server 0 refused: server 0 "
                                           "stopped while the pull waited for version 1");
  stopper.join();  // job.stop() has returned: the result is written
  EXPECT_EQ(job.result(0).end, ServeEnd::kStopped);
}

}  // namespace
}  // namespace dtrain::ps
