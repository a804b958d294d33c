// A CTR step's one request per server (Client::push_step, Kind::kPush
// carrying row pushes and the pull): its framing, the server's refusals of
// a bad part (the whole request, nothing taken), and its results against
// the separate calls (push_rows per table, then push_and_pull), bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <exception>
#include <limits>
#include <thread>

#include "core/rng.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;
using testing::RawPeer;

using dtrain::testing::expect_error_naming;

Message row_push(uint32_t table, std::vector<uint64_t> keys, std::vector<float> floats) {
  Message rows;
  rows.kind = Kind::kPushRows;
  rows.table = table;
  rows.lr = 0.25f;
  rows.keys = std::move(keys);
  rows.floats = std::move(floats);
  return rows;
}

// A push with two tables' rows (the second given as float parts) and a pull.
Message step_push(const std::vector<float>& second_rows) {
  Message push;
  push.kind = Kind::kPush;
  push.worker = 1;
  push.request_id = 17;
  push.version = 4;
  push.samples = 8;
  push.lr = 0.25f;
  push.loss_sum = 3.5;
  push.correct = 6;
  push.floats = {0.5f, -1.5f, 2.0f};
  push.rows.push_back(row_push(0, {3, 9}, {1, 2, 3, 4}));
  Message second = row_push(2, {uint64_t{1} << 62}, {});
  second.float_parts = {std::as_bytes(std::span<const float>(second_rows))};
  push.rows.push_back(std::move(second));
  push.with_pull = true;
  push.min_version = 5;
  push.wait_ms = 900;
  return push;
}

TEST(PsPushStepMessages, RowsAndThePullRoundTripInOnePush) {
  const std::vector<float> second{7, 8, 9};
  const std::vector<std::byte> payload = encode_message(step_push(second));
  for (FloatDecoding d : {FloatDecoding::kCopy, FloatDecoding::kView}) {
    const Message back = decode_message(payload, d);
    EXPECT_EQ(back.kind, Kind::kPush);
    EXPECT_EQ(back.float_count(), 3u);
    ASSERT_EQ(back.rows.size(), 2u);
    EXPECT_EQ(back.rows[0].kind, Kind::kPushRows);
    EXPECT_EQ(back.rows[0].table, 0u);
    EXPECT_EQ(back.rows[0].keys, (std::vector<uint64_t>{3, 9}));
    EXPECT_EQ(back.rows[0].floats, (std::vector<float>{1, 2, 3, 4}));
    EXPECT_EQ(back.rows[1].table, 2u);
    EXPECT_EQ(back.rows[1].lr, 0.25f);
    EXPECT_EQ(back.rows[1].keys, (std::vector<uint64_t>{uint64_t{1} << 62}));
    EXPECT_EQ(back.rows[1].floats, second);
    for (const Message& rows : back.rows) {
      // The push's own identity, as separate row requests would carry it.
      EXPECT_EQ(rows.worker, 1u);
      EXPECT_EQ(rows.request_id, 17u);
      EXPECT_EQ(rows.version, 4u);
      EXPECT_TRUE(rows.rows.empty());
    }
    EXPECT_TRUE(back.with_pull);
    EXPECT_EQ(back.min_version, 5u);
    EXPECT_EQ(back.wait_ms, 900u);
  }
  // The reply carries the pull's body; a plain push's reply does not.
  Message reply;
  reply.kind = Kind::kReply;
  reply.reply_to = Kind::kPush;
  reply.status = ReplyStatus::kDropped;
  reply.with_pull = true;
  reply.min_clock = 2;
  reply.totals = {1.5, 3, 4, {{4, 0.5, true}}};
  reply.floats = {1, 2};
  const Message back = decode_message(encode_message(reply));
  EXPECT_TRUE(back.with_pull);
  EXPECT_EQ(back.status, ReplyStatus::kDropped);
  EXPECT_EQ(back.floats, reply.floats);
  EXPECT_EQ(back.totals.samples, 4);
  ASSERT_EQ(back.totals.workers.size(), 1u);
  reply.with_pull = false;
  reply.floats.clear();
  EXPECT_FALSE(decode_message(encode_message(reply)).with_pull);
}

TEST(PsPushStepMessages, TruncatedOversizedOrMalformedCombinedPushesAreRejected) {
  const std::vector<float> second{7, 8, 9};
  std::vector<std::byte> payload = encode_message(step_push(second));
  for (FloatDecoding d : {FloatDecoding::kCopy, FloatDecoding::kView}) {
    for (size_t size = 0; size < payload.size(); ++size) {
      EXPECT_THROW(decode_message(std::span(payload).first(size), d), DataError) << size;
    }
    std::vector<std::byte> longer = payload;
    longer.push_back(std::byte{0});
    EXPECT_THROW(decode_message(longer, d), DataError);
  }
  // Layout: prefix 24, figures 36, gradient 8 + 12, then the tail: row
  // count 4 at 80, the first row push (table 4, lr 4, keys 8 + 16, floats
  // 8 + 16) at 84, the second at 140 (its key count at 148, then keys 8 +
  // 8 and floats 8 + 12), the pull flag at 184.
  constexpr size_t kRowCount = 80;
  constexpr size_t kSecondKeys = 148;
  constexpr size_t kPullFlag = 184;
  ASSERT_EQ(payload.size(), kPullFlag + 1 + 8 + 4 + 4);  // + the prefetch count (0)
  std::vector<std::byte> bad = payload;
  const uint32_t many = 1u << 30;
  std::memcpy(bad.data() + kRowCount, &many, sizeof many);
  expect_error_naming<DataError>([&] { decode_message(bad); }, "'push row pushes'");
  bad = payload;
  const uint64_t huge = uint64_t{1} << 60;
  std::memcpy(bad.data() + kSecondKeys, &huge, sizeof huge);
  expect_error_naming<DataError>([&] { decode_message(bad); }, "'push_rows keys'");
  bad = payload;
  bad[kPullFlag] = std::byte{2};
  expect_error_naming<DataError>([&] { decode_message(bad); }, "push pull flag is 2");
  // A row push carrying rows of its own, or a push carrying another kind,
  // is not encoded at all.
  Message nested = step_push(second);
  nested.rows[0].rows.push_back(row_push(0, {1}, {1, 2}));
  expect_error_naming<UsageError>([&] { encode_message(nested); }, "with rows");
  Message other = step_push(second);
  other.rows[1].kind = Kind::kPullRows;
  expect_error_naming<UsageError>([&] { encode_message(other); }, "not a pull_rows");
  // A reply whose pull flag is neither 0 nor 1.
  Message reply;
  reply.kind = Kind::kReply;
  reply.reply_to = Kind::kPush;
  std::vector<std::byte> reply_bytes = encode_message(reply);
  ASSERT_EQ(reply_bytes.size(), 25u);
  reply_bytes[24] = std::byte{3};
  expect_error_naming<DataError>([&] { decode_message(reply_bytes); }, "push reply pull flag is 3");
}

StateDict small_model() {
  StateDict model;
  model.insert("w", Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}));
  model.insert("b", Tensor::from_vector({0.5f, -0.5f}, {2}));
  return model;
}

const std::vector<SparseTableSpec>& two_tables() {
  static const std::vector<SparseTableSpec> tables{{"emb", 2, 0.1f}, {"ctx", 3, 0.1f}};
  return tables;
}

// One worker's part of a step: keys per table (duplicates included) and
// their gradient rows, the dense gradient, the samples.
struct WorkerStep {
  std::vector<std::vector<uint64_t>> keys;
  std::vector<Tensor> rows;
  std::vector<Tensor> dense;
  int64_t samples = 0;
};

WorkerStep worker_step(int worker, int step) {
  Rng rng(static_cast<uint64_t>(100 + 10 * step + worker));
  WorkerStep s;
  // Keys shared by both workers, duplicated within one, and spread over
  // both servers (sparse_server_of).
  s.keys = {worker == 0 ? std::vector<uint64_t>{10, 20, 30, 10, 77}
                        : std::vector<uint64_t>{30, 40, 50, 1u << 20},
            worker == 0 ? std::vector<uint64_t>{5, 6} : std::vector<uint64_t>{6, 7, 8}};
  for (size_t t = 0; t < s.keys.size(); ++t) {
    s.rows.push_back(dtrain::testing::normal_tensor(
        {static_cast<int64_t>(s.keys[t].size()), two_tables()[t].dim}, rng));
  }
  for (const auto& [name, t] : small_model())
    s.dense.push_back(dtrain::testing::normal_tensor(t.shape(), rng));
  s.samples = 3 + worker;
  return s;
}

struct Outcome {
  PsState state;
  std::vector<std::vector<float>> pulled;  // worker 0's last pull
  uint64_t bytes_sent = 0;                 // both workers, the steps only
};

// Three steps of two workers, each step's rows and dense push either in one
// request per server or as the separate calls; sync runs the workers on two
// threads (a version needs both), async one after the other.
Outcome run(Consistency consistency, bool combined) {
  ServerOptions options;
  options.consistency = consistency;
  options.seed = 11;
  options.optimizer.type = "adagrad";
  PsJob job(2, 2, options);
  std::vector<std::unique_ptr<Client>> c = job.initialised_clients(small_model(), two_tables());
  const bool sync = consistency == Consistency::kSync;
  std::vector<std::vector<Tensor>> out(2);
  for (auto& o : out) {
    for (const auto& [name, t] : small_model()) o.push_back(Tensor::zeros(t.shape()));
  }
  const uint64_t bytes_before = c[0]->bytes_sent() + c[1]->bytes_sent();
  uint64_t version = 0;
  for (int step = 0; step < 3; ++step) {
    // The step's version, read by both workers' threads; written only
    // after both joined (the servers order the steps, which TSan cannot see).
    const uint64_t at = version;
    auto one = [&](int w) {
      const WorkerStep s = worker_step(w, step);
      Client& client = *c[static_cast<size_t>(w)];
      const DensePush push{s.samples, 0.5f, at, 1.0, 1, 0.0, {}};
      const uint64_t wanted = sync ? at + 1 : 0;
      if (combined) {
        std::vector<Client::RowPush> rows;
        for (size_t t = 0; t < s.keys.size(); ++t) rows.push_back({t, s.keys[t], s.rows[t]});
        return client.push_step(rows, s.dense, push, out[static_cast<size_t>(w)], wanted);
      }
      for (size_t t = 0; t < s.keys.size(); ++t)
        client.push_rows(t, s.keys[t], s.rows[t], 0.5f, at);
      return client.push_and_pull(s.dense, push, out[static_cast<size_t>(w)], wanted);
    };
    // Rows are created by a pull first (as the strategy's lookup does), by
    // worker 0 alone, so that both runs create them in the same order.
    for (int w = 0; w < 2; ++w) {
      const WorkerStep s = worker_step(w, step);
      for (size_t t = 0; t < s.keys.size(); ++t) {
        c[0]->pull_rows(t, s.keys[t], Tensor::zeros(s.rows[t].shape()));
      }
    }
    if (sync) {
      std::exception_ptr failed;
      uint64_t reached = 0;
      {
        std::jthread other([&] {
          try {
            one(1);
          } catch (...) {
            failed = std::current_exception();
          }
        });
        reached = one(0);
      }
      if (failed) std::rethrow_exception(failed);
      version = reached;
    } else {
      one(0);
      version = one(1);
    }
  }
  Outcome o;
  o.bytes_sent = c[0]->bytes_sent() + c[1]->bytes_sent() - bytes_before;
  o.state = c[0]->pull_state();
  for (const Tensor& t : out[0]) o.pulled.push_back(t.to_vector());
  return o;
}

class PsPushStep : public ::testing::TestWithParam<Consistency> {};

TEST_P(PsPushStep, EqualsTheSeparateCallsBitForBit) {
  const Outcome separate = run(GetParam(), false);
  const Outcome combined = run(GetParam(), true);
  EXPECT_EQ(combined.state.version, separate.state.version);
  EXPECT_EQ(combined.pulled, separate.pulled);
  ASSERT_EQ(combined.state.sparse.size(), separate.state.sparse.size());
  ASSERT_FALSE(separate.state.sparse.empty());
  for (const auto& [name, t] : separate.state.sparse) {
    EXPECT_EQ(combined.state.sparse.at(name).to_vector(), t.to_vector()) << name;
  }
  ASSERT_EQ(combined.state.optimizer.size(), separate.state.optimizer.size());
  for (const auto& [name, t] : separate.state.optimizer) {
    EXPECT_EQ(combined.state.optimizer.at(name).to_vector(), t.to_vector()) << name;
  }
  for (const auto& [name, t] : separate.state.dense) {
    EXPECT_EQ(combined.state.dense.at(name).to_vector(), t.to_vector()) << name;
  }
  // The rows did move (Adagrad's accumulators of the touched rows are not
  // zero), so equality is not that of two runs that dropped them.
  float accumulated = 0.0f;
  for (const auto& [name, t] : separate.state.sparse) {
    if (name.find("sum") != std::string::npos) {
      for (float v : t.to_vector()) accumulated += v;
    }
  }
  EXPECT_GT(accumulated, 0.0f) << "no sparse optimizer state moved";
  // One request per server instead of one per table and server plus one:
  // fewer frames, so fewer bytes of headers.
  EXPECT_LT(combined.bytes_sent, separate.bytes_sent);
}

INSTANTIATE_TEST_SUITE_P(Consistencies, PsPushStep,
                         ::testing::Values(Consistency::kSync, Consistency::kAsync),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// Backup workers: a straggler's combined push for a version that closed
// without it is dropped whole (its rows too), and its pull is answered.
TEST(PsPushStepBackupWorkers, ALatePushIsDroppedWithItsRowsAndItsPullAnswered) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.backup_workers = 1;
  options.optimizer.type = "sgd";
  PsJob job(1, 3, options);
  std::vector<std::unique_ptr<Client>> c =
      job.initialised_clients(small_model(), {{"emb", 2, 0.1f}});
  const std::vector<uint64_t> keys{4, 9};
  Tensor before = Tensor::zeros({2, 2});
  c[0]->pull_rows(0, keys, before);
  // Worker w's step at `version`: ones for its rows (worker 2: row 4
  // only; none with `rows` false) and its dense gradient.
  auto step = [&](int w, uint64_t version, bool rows, PushResult* result) {
    std::vector<Tensor> out{Tensor::zeros({2, 3}), Tensor::zeros({2})};
    const int64_t n = w == 2 ? 1 : 2;
    std::vector<Client::RowPush> pushes;
    if (rows) pushes.push_back({0, std::span<const uint64_t>(keys).first(n), Tensor::ones({n, 2})});
    return c[static_cast<size_t>(w)]->push_step(pushes, {Tensor::ones({2, 3}), Tensor::ones({2})},
                                                DensePush{1, 1.0f, version, 0.0, 0, 0.0, {}}, out,
                                                version + 1, result);
  };
  {
    std::jthread first([&] { step(0, 0, true, nullptr); });
    EXPECT_EQ(step(1, 0, true, nullptr), 1u);
  }
  PushResult late;
  EXPECT_EQ(step(2, 0, true, &late), 1u);
  EXPECT_EQ(late.servers_dropped, 1);
  EXPECT_EQ(late.servers_applied, 0);
  // The next version closes without rows: held late rows would show now.
  {
    std::jthread first([&] { step(0, 1, false, nullptr); });
    EXPECT_EQ(step(1, 1, false, nullptr), 2u);
  }
  Tensor after = Tensor::zeros({2, 2});
  c[0]->pull_rows(0, keys, after);
  // Workers 0 and 1 pushed ones for both rows (mean 1, lr 1); worker 2's
  // extra ones on row 4 were dropped.
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t d = 0; d < 2; ++d) EXPECT_EQ(after.at({i, d}), before.at({i, d}) - 1.0f);
  }
}

// A combined request with one bad part is refused whole: the server names
// the part and takes neither the rows nor the dense push nor the pull.
TEST(PsPushStepRefusals, ABadPartRefusesTheWholeRequestAndAStrangerIsRefused) {
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.optimizer.type = "sgd";
  PsJob job(1, 2, options);  // one server: every key is its own
  auto c0 = job.client(0);
  c0->init(small_model(), {{"emb", 2, 0.1f}});
  auto c1 = job.client(1);
  c1->init(small_model(), {{"emb", 2, 0.1f}});
  Tensor before = Tensor::zeros({1, 2});
  c0->pull_rows(0, std::vector<uint64_t>{1}, before);

  RawPeer raw(job.endpoints()[0], job.auth());
  Message push;
  push.kind = Kind::kPush;
  push.worker = 1;
  push.samples = 1;
  push.lr = 1.0f;
  push.floats.assign(8, 0.5f);
  push.with_pull = true;
  push.min_version = 1;
  push.wait_ms = 30000;
  Message bad = push;
  bad.rows = {row_push(0, {1}, {1, 2}), row_push(3, {1}, {1, 2})};
  Message reply = raw.request(bad, 1, 101);
  EXPECT_EQ(reply.status, ReplyStatus::kError);
  EXPECT_EQ(reply.reply_to, Kind::kPush);
  EXPECT_EQ(reply.error, "unknown table 3; the job has 1 tables");
  bad.rows = {row_push(0, {1}, {1, 2, 3})};
  EXPECT_EQ(raw.request(bad, 1, 102).error, "table 'emb': 3 floats for 1 keys of dim 2");
  bad.rows = {row_push(0, {1}, {1, -std::numeric_limits<float>::infinity()})};
  EXPECT_EQ(raw.request(bad, 1, 103).error,
            "push_rows from worker 1: value 1 of 2 is -inf; nothing applied");
  bad.rows = {row_push(0, {1}, {1, 2})};
  bad.floats.assign(3, 0.5f);
  EXPECT_EQ(raw.request(bad, 1, 104).error,
            "gradient has 3 floats; server 0 holds 8 (range [0, 8))");
  Message stranger = push;
  stranger.worker = 7;
  stranger.rows = {row_push(0, {1}, {1, 2})};
  stranger.request_id = 105;
  raw.send(stranger, worker_rank(1, 7));
  EXPECT_EQ(raw.receive().error, "worker index 7 out of range [0, 2)");
  const ServerStats stats = c0->stats(0);
  EXPECT_EQ(stats.version, 0u);
  EXPECT_EQ(stats.pushes_applied, 0u);
  EXPECT_EQ(stats.parked_pulls, 0u);

  // A good one now: its pull is parked until worker 0's push closes the
  // version, then answered as the push's reply with the range.
  Message good = push;
  good.rows = {row_push(0, {1}, {2, 4})};
  good.request_id = 106;
  raw.send(good, worker_rank(1, 1));
  std::vector<Tensor> out{Tensor::zeros({2, 3}), Tensor::zeros({2})};
  EXPECT_EQ(c0->push_step({}, {Tensor::zeros({2, 3}), Tensor::zeros({2})},
                          DensePush{1, 1.0f, 0, 0.0, 0, 0.0, {}}, out, 1),
            1u);
  reply = raw.receive();
  EXPECT_EQ(reply.status, ReplyStatus::kOk);
  EXPECT_EQ(reply.reply_to, Kind::kPush);
  EXPECT_TRUE(reply.with_pull);
  EXPECT_EQ(reply.request_id, 106u);
  EXPECT_EQ(reply.version, 1u);
  EXPECT_EQ(reply.floats.size(), 8u);
  Tensor after = Tensor::zeros({1, 2});
  c0->pull_rows(0, std::vector<uint64_t>{1}, after);
  // sgd, lr 1, worker 1's rows weighted 1 of 2 samples: row -= {2, 4} / 2.
  EXPECT_EQ(after.at({0, 0}), before.at({0, 0}) - 1.0f);
  EXPECT_EQ(after.at({0, 1}), before.at({0, 1}) - 2.0f);
}

}  // namespace
}  // namespace dtrain::ps
