// FlServer against scripted clients (raw DEALER sockets speaking
// fl/fl_protocol.h) on threads: aggregation, every bad input the issue
// lists (wrong shape, non-finite, stale round, unknown client id, a sender
// without the job secret), a round closing at its deadline without a silent
// client, a failed round repeated then a clear error, and a resumed server.
#include "fl/fl_server.h"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <thread>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "core/error.h"
#include "fl/fl_protocol.h"
#include "fl/server_optimizer.h"
#include "fl/upload_codec.h"
#include "testing/junk_frames.h"

namespace dtrain::fl {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr const char* kJob = "fl-server-test";
constexpr const char* kSecret = "s3cret";

// A scripted client: joins, answers each task with what `answer` returns
// (any number of updates, possibly bad ones), stops at kDone or its deadline.
class ScriptedClient {
 public:
  using Answer = std::function<std::vector<ClientUpdate>(const FlTask&)>;

  ScriptedClient(const std::string& endpoint, int64_t id, Answer answer,
                 const std::string& secret = kSecret)
      : id_(id), answer_(std::move(answer)), auth_(kJob, secret) {
    comm::wire::FramedSocketOptions o;
    o.name = fmt::format("scripted client {}", id);
    o.rank = client_rank(id);
    o.limits.job_id = auth_.job_id();
    o.limits.world_size = 1;
    o.limits.receiver = client_rank(id);
    o.accepted = {comm::wire::MessageType::kData};
    socket_ = std::make_unique<comm::wire::FramedSocket>(
        context_, comm::wire::FramedSocket::Role::kDealer, endpoint, std::move(o), auth_,
        Logger::null());
  }

  void send(std::vector<std::byte> payload) {
    comm::wire::FrameHeader h;
    h.receiver = kServerRank;
    socket_->send({}, h, std::move(payload));
  }

  // Runs until kDone (true) or the deadline (false).
  bool run(Deadline deadline) {
    send(encode_join(id_));
    auto next_join = Clock::now() + milliseconds(200);
    while (!deadline.expired()) {
      auto frame = socket_->receive(Deadline(std::min(next_join, deadline.at())));
      if (!frame) {
        send(encode_join(id_));
        next_join = Clock::now() + milliseconds(200);
        continue;
      }
      FlMessage m = decode_fl_message(frame->payload());
      if (m.kind == FlKind::kDone) return true;
      if (m.kind == FlKind::kTask) {
        ++tasks_;
        for (ClientUpdate& u : answer_(m.task)) send(encode_update(u));
      }
    }
    return false;
  }
  int tasks() const { return tasks_; }

 private:
  int64_t id_;
  Answer answer_;
  comm::JobAuth auth_;
  zmq::context_t context_{1};
  std::unique_ptr<comm::wire::FramedSocket> socket_;
  int tasks_ = 0;
};

ClientUpdate update_of(int64_t client, const FlTask& task, std::vector<float> delta,
                       int64_t samples = 10) {
  ClientUpdate u;
  u.client = client;
  u.round = task.round;
  u.samples = samples;
  u.loss = 1.0;
  u.steps = 1;
  u.delta = std::move(delta);
  return u;
}

FlServerOptions options_for(int64_t clients, int64_t rounds, int64_t model_size) {
  FlServerOptions o;
  o.config.clients = clients;
  o.config.fraction = 1.0;
  o.config.rounds = rounds;
  o.config.min_fit_clients = 1;
  o.config.round_timeout_s = 10.0;
  o.config.server = "tcp://127.0.0.1:0";
  o.job_name = kJob;
  o.initial_weights.assign(static_cast<size_t>(model_size), 0.0f);
  o.join_timeout = milliseconds(20000);
  o.done_linger = milliseconds(200);
  return o;
}

TEST(FlServer, AggregatesTheWeightedMeanOfItsClients) {
  testing::LineLog log;
  FlServerOptions o = options_for(2, 2, 3);
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  std::vector<ServerState> checkpoints;
  o.on_checkpoint = [&](const ServerState& s) { checkpoints.push_back(s); };
  FlServer server(o, comm::JobAuth(kJob, kSecret), log.logger());
  std::jthread serving([&] { ASSERT_NO_THROW(server.run()); });
  const Deadline deadline = Deadline::after(milliseconds(30000));
  ScriptedClient a(server.endpoint(), 0, [](const FlTask& t) {
    return std::vector{update_of(0, t, {1.0f, 1.0f, 1.0f}, 10)};
  });
  ScriptedClient b(server.endpoint(), 1, [](const FlTask& t) {
    return std::vector{update_of(1, t, {4.0f, 4.0f, -2.0f}, 30)};
  });
  std::jthread ta([&] { EXPECT_TRUE(a.run(deadline)); });
  EXPECT_TRUE(b.run(deadline));
  ta.join();
  serving.join();
  ASSERT_EQ(reports.size(), 2u) << log.all();
  EXPECT_EQ(reports[0].participated, (std::vector<int64_t>{0, 1}));
  EXPECT_TRUE(reports[0].dropped.empty());
  ASSERT_EQ(checkpoints.size(), 2u);
  // Each round moves by (10 * 1 + 30 * 4) / 40 = 3.25 and (10 - 60) / 40 = -1.25.
  EXPECT_FLOAT_EQ(checkpoints[1].weights[0], 6.5f);
  EXPECT_FLOAT_EQ(checkpoints[1].weights[2], -2.5f);
  EXPECT_EQ(checkpoints[1].round, 2);
}

TEST(FlServer, RejectsBadUpdatesAndForeignSendersNamingTheClient) {
  testing::LineLog log;
  FlServerOptions o = options_for(4, 1, 2);
  o.config.round_timeout_s = 2.0;  // client 3 never answers its own round properly
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  FlServer server(o, comm::JobAuth(kJob, kSecret), log.logger());
  FlServerResult result;
  std::jthread serving([&] { result = server.run(); });
  const Deadline deadline = Deadline::after(milliseconds(30000));

  // A sender with another secret, and a join with an id out of range: both
  // are refused before any round opens.
  ScriptedClient stranger(server.endpoint(), 0, nullptr, "wrong secret");
  stranger.send(encode_join(0));
  ScriptedClient out_of_range(server.endpoint(), 17, nullptr);
  out_of_range.send(encode_join(17));
  while (server.stats().dropped_frames < 1 || server.stats().rejected_updates < 1) {
    ASSERT_FALSE(deadline.expired()) << log.all();
    std::this_thread::sleep_for(milliseconds(10));
  }

  // Client 0 answers well; in its round client 17 (out of range) sends an
  // update too (from client 0's thread, after the main thread is done with
  // that socket).
  ScriptedClient good(server.endpoint(), 0, [&out_of_range](const FlTask& t) {
    out_of_range.send(encode_update(update_of(17, t, {1.0f, 2.0f})));
    return std::vector{update_of(0, t, {1.0f, 2.0f})};
  });
  ScriptedClient wrong_shape(server.endpoint(), 1, [](const FlTask& t) {
    return std::vector{update_of(1, t, {1.0f, 2.0f, 3.0f})};
  });
  ScriptedClient non_finite(server.endpoint(), 2, [](const FlTask& t) {
    return std::vector{update_of(2, t, {std::numeric_limits<float>::quiet_NaN(), 0.0f})};
  });
  ScriptedClient stale(server.endpoint(), 3, [](const FlTask& t) {
    ClientUpdate u = update_of(3, t, {5.0f, 5.0f});
    u.round = t.round + 1;  // not the open round
    return std::vector{u};
  });
  std::vector<std::jthread> threads;
  for (ScriptedClient* c : {&good, &wrong_shape, &non_finite}) {
    threads.emplace_back([c, deadline] { EXPECT_TRUE(c->run(deadline)); });
  }
  EXPECT_TRUE(stale.run(deadline));
  threads.clear();
  serving.join();

  ASSERT_EQ(reports.size(), 1u) << log.all();
  const RoundReport& r = reports[0];
  EXPECT_EQ(r.sampled, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(r.participated, (std::vector<int64_t>{0}));
  EXPECT_EQ(r.dropped, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(r.rejected, 4);
  EXPECT_EQ(result.state.weights, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(log.count("client 1, round 1: update has 3 values, the model has 2"), 1u) << log.all();
  EXPECT_EQ(log.count("client 2, round 1: update value 0 is nan"), 1u) << log.all();
  EXPECT_EQ(log.count("client 3, round 1: update from future round 2"), 1u) << log.all();
  EXPECT_EQ(log.count("a join from client 17: the id is outside [0, 4)"), 1u) << log.all();
  EXPECT_EQ(log.count("client 17, round 1: client id outside [0, 4)"), 1u) << log.all();
  EXPECT_GE(server.stats().dropped_frames, 1u);
  EXPECT_EQ(server.stats().rejected_updates, 5);
}

TEST(FlServer, DecodesCompressedUpdatesAndRejectsThoseItCannotDecode) {
  // Uploads in the codec's message (method fp16; the 2-value tensor is below
  // min_size, so it travels dense inside the message).
  const std::vector<compress::TensorLayout> layouts = {{1, 2}};
  compress::Options upload;
  upload.method = compress::Method::kFp16;
  const UploadCodec codec(upload, layouts);
  for (const bool server_compresses : {true, false}) {
    testing::LineLog log;
    FlServerOptions o = options_for(2, 1, 2);
    o.config.round_timeout_s = 2.0;
    if (server_compresses) {
      o.upload = upload;
      o.layouts = layouts;
    }
    std::vector<RoundReport> reports;
    o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
    o.max_round_attempts = 1;
    FlServer server(o, comm::JobAuth(kJob, kSecret), log.logger());
    std::string failure;
    std::jthread serving([&] {
      try {
        server.run();
      } catch (const Error& e) {  // the dense server: no update it can use
        failure = e.what();
      }
    });
    const Deadline deadline = Deadline::after(milliseconds(30000));
    std::unique_ptr<ScriptedClient> good, garbled;
    good = std::make_unique<ScriptedClient>(server.endpoint(), 0, [&](const FlTask& t) {
      const ClientUpdate u = update_of(0, t, {1.0f, 2.0f});
      good->send(encode_compressed_update(u, codec.encode(u.delta, t.round, 0)));
      return std::vector<ClientUpdate>{};
    });
    garbled = std::make_unique<ScriptedClient>(server.endpoint(), 1, [&](const FlTask& t) {
      const ClientUpdate u = update_of(1, t, {});
      garbled->send(encode_compressed_update(u, std::vector<std::byte>(9, std::byte{0xff})));
      return std::vector<ClientUpdate>{};
    });
    if (server_compresses) {
      std::jthread other([&] { EXPECT_TRUE(good->run(deadline)); });
      EXPECT_TRUE(garbled->run(deadline));
      other.join();
      serving.join();
      ASSERT_EQ(reports.size(), 1u) << log.all();
      EXPECT_EQ(reports[0].rejected, 1) << log.all();
      EXPECT_EQ(reports[0].participated, (std::vector<int64_t>{0})) << log.all();
      EXPECT_EQ(log.count("fl server: update of client 1, round 1"), 1u) << log.all();
      EXPECT_TRUE(failure.empty()) << failure;
    } else {
      // Neither update decodes: the round cannot close and the job stops.
      std::jthread other([&] { good->run(Deadline::after(milliseconds(5000))); });
      garbled->run(Deadline::after(milliseconds(5000)));
      other.join();
      serving.join();
      EXPECT_TRUE(reports.empty());
      EXPECT_EQ(server.stats().rejected_updates, 2) << log.all();
      EXPECT_EQ(log.count("compressed, but this job's uploads are dense"), 2u) << log.all();
      EXPECT_NE(failure.find("round 1"), std::string::npos) << failure;
    }
  }
}

TEST(FlServer, ARoundClosesAtItsDeadlineWithoutASilentClient) {
  testing::LineLog log;
  FlServerOptions o = options_for(3, 2, 1);
  o.config.round_timeout_s = 0.5;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  FlServer server(o, comm::JobAuth(kJob, kSecret), log.logger());
  std::jthread serving([&] { ASSERT_NO_THROW(server.run()); });
  const Deadline deadline = Deadline::after(milliseconds(30000));
  auto answers = [](int64_t id) {
    return [id](const FlTask& t) { return std::vector{update_of(id, t, {1.0f})}; };
  };
  ScriptedClient a(server.endpoint(), 0, answers(0));
  ScriptedClient b(server.endpoint(), 1, answers(1));
  // Client 2 joins and never answers a task (as a client killed mid-round).
  ScriptedClient silent(server.endpoint(), 2,
                        [](const FlTask&) { return std::vector<ClientUpdate>{}; });
  std::jthread ta([&] { EXPECT_TRUE(a.run(deadline)); });
  std::jthread tb([&] { EXPECT_TRUE(b.run(deadline)); });
  EXPECT_TRUE(silent.run(deadline));
  ta.join();
  tb.join();
  serving.join();
  ASSERT_EQ(reports.size(), 2u) << log.all();
  EXPECT_EQ(reports[0].dropped, (std::vector<int64_t>{2}));
  for (const RoundReport& r : reports) {
    EXPECT_EQ(r.participated, (std::vector<int64_t>{0, 1}));
    EXPECT_FALSE(r.failed);
  }
  // Round 2 samples the silent client only if its next join came first (it
  // missed round 1's deadline); either way it is not aggregated.
  EXPECT_TRUE(reports[1].dropped.empty() || reports[1].dropped == std::vector<int64_t>{2});
}

TEST(FlServer, RepeatsARoundWithTooFewUpdatesThenStopsNamingTheRound) {
  testing::LineLog log;
  FlServerOptions o = options_for(2, 1, 1);
  o.config.min_fit_clients = 2;
  o.config.round_timeout_s = 0.3;
  o.max_round_attempts = 2;
  FlServer server(o, comm::JobAuth(kJob, kSecret), log.logger());
  std::string error;
  std::jthread serving([&] {
    try {
      server.run();
    } catch (const CommError& e) {
      error = e.what();
    }
  });
  const Deadline deadline = Deadline::after(milliseconds(20000));
  ScriptedClient a(server.endpoint(), 0,
                   [](const FlTask& t) { return std::vector{update_of(0, t, {1.0f})}; });
  ScriptedClient silent(server.endpoint(), 1,
                        [](const FlTask&) { return std::vector<ClientUpdate>{}; });
  std::jthread ta([&] { a.run(Deadline::after(milliseconds(3000))); });
  silent.run(Deadline::after(milliseconds(3000)));
  ta.join();
  serving.join();
  EXPECT_FALSE(deadline.expired());
  EXPECT_EQ(silent.tasks(), 2);
  EXPECT_NE(error.find("fl server round 1"), std::string::npos) << error;
  EXPECT_NE(error.find("sampled [0, 1], accepted [0]"), std::string::npos) << error;
  EXPECT_NE(error.find("gave up after 2 attempt(s)"), std::string::npos) << error;
  EXPECT_EQ(log.count("round 1: 1 accepted update(s)"), 1u) << log.all();
}

TEST(FlServer, AResumedServerContinuesAfterItsLastRound) {
  testing::LineLog log;
  FlServerOptions o = options_for(1, 3, 1);
  ServerState state;
  state.round = 2;
  state.weights = {10.0f};
  state.optimizer = ServerOptimizer(o.config.server_optimizer, 1).state_dict();
  o.resume = state;
  std::vector<RoundReport> reports;
  o.on_round = [&](const RoundReport& r) { reports.push_back(r); };
  FlServer server(o, comm::JobAuth(kJob, kSecret), log.logger());
  FlServerResult result;
  std::jthread serving([&] { result = server.run(); });
  ScriptedClient a(server.endpoint(), 0,
                   [](const FlTask& t) { return std::vector{update_of(0, t, {1.0f})}; });
  EXPECT_TRUE(a.run(Deadline::after(milliseconds(20000))));
  serving.join();
  ASSERT_EQ(reports.size(), 1u) << log.all();
  EXPECT_EQ(reports[0].round, 3);
  EXPECT_EQ(a.tasks(), 1);
  EXPECT_EQ(result.state.round, 3);
  EXPECT_EQ(result.state.weights, (std::vector<float>{11.0f}));
}

}  // namespace
}  // namespace dtrain::fl
