// A push's row prefetch (Message::prefetch, Client::push_step's prefetch):
// its framing in the request and in the reply (round trips, every
// truncation, oversized counts, a prefetch without a pull), and the rows it
// brings in sync: read once the version closed, so they are the values of
// that version's row update, bit for bit what a pull_rows after the step
// returns, rows created by the read included.
#include <gtest/gtest.h>

#include <cstring>
#include <exception>
#include <thread>

#include "core/rng.h"
#include "ps_test_util.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using testing::PsJob;

using dtrain::testing::expect_error_naming;

Message row_pull(uint32_t table, std::vector<uint64_t> keys) {
  Message rows;
  rows.kind = Kind::kPullRows;
  rows.table = table;
  rows.keys = std::move(keys);
  return rows;
}

// A push with its pull and two row pulls riding with it.
Message prefetching_push() {
  Message push;
  push.kind = Kind::kPush;
  push.worker = 1;
  push.request_id = 23;
  push.version = 4;
  push.samples = 2;
  push.lr = 0.5f;
  push.floats = {0.5f, -1.5f};
  push.with_pull = true;
  push.min_version = 5;
  push.wait_ms = 700;
  push.prefetch = {row_pull(1, {5, uint64_t{1} << 40}), row_pull(0, {2})};
  return push;
}

TEST(PsPushPrefetchMessages, RowPullsAndTheirRowsRoundTrip) {
  const std::vector<std::byte> payload = encode_message(prefetching_push());
  for (FloatDecoding d : {FloatDecoding::kCopy, FloatDecoding::kView}) {
    const Message back = decode_message(payload, d);
    EXPECT_TRUE(back.with_pull);
    EXPECT_EQ(back.min_version, 5u);
    ASSERT_EQ(back.prefetch.size(), 2u);
    EXPECT_EQ(back.prefetch[0].kind, Kind::kPullRows);
    EXPECT_EQ(back.prefetch[0].table, 1u);
    EXPECT_EQ(back.prefetch[0].keys, (std::vector<uint64_t>{5, uint64_t{1} << 40}));
    EXPECT_EQ(back.prefetch[1].table, 0u);
    EXPECT_EQ(back.prefetch[1].keys, (std::vector<uint64_t>{2}));
    for (const Message& rows : back.prefetch) {
      EXPECT_EQ(rows.worker, 1u);
      EXPECT_EQ(rows.request_id, 23u);
    }
  }
  // The reply: the pull's body, then each row pull's rows in order (one
  // given as float parts, as the server encodes them from its table).
  const std::vector<float> second{7, 8};
  Message reply;
  reply.kind = Kind::kReply;
  reply.reply_to = Kind::kPush;
  reply.with_pull = true;
  reply.floats = {1, 2};
  reply.prefetch.resize(2);
  reply.prefetch[0].floats = {3, 4, 5, 6};
  reply.prefetch[1].float_parts = {std::as_bytes(std::span<const float>(second))};
  const std::vector<std::byte> reply_bytes = encode_message(reply);
  const Message copied = decode_message(reply_bytes, FloatDecoding::kCopy);
  ASSERT_EQ(copied.prefetch.size(), 2u);
  EXPECT_EQ(copied.floats, reply.floats);
  EXPECT_EQ(copied.prefetch[0].floats, reply.prefetch[0].floats);
  EXPECT_EQ(copied.prefetch[1].floats, second);
  const Message viewed = decode_message(reply_bytes, FloatDecoding::kView);
  ASSERT_EQ(viewed.prefetch.size(), 2u);
  std::vector<float> rows(2);
  ASSERT_EQ(viewed.prefetch[1].float_bytes.size(), sizeof(float) * 2);
  std::memcpy(rows.data(), viewed.prefetch[1].float_bytes.data(), sizeof(float) * 2);
  EXPECT_EQ(rows, second);
  // Without row pulls a pull's tail and reply end with a zero count.
  Message plain = prefetching_push();
  plain.prefetch.clear();
  EXPECT_TRUE(decode_message(encode_message(plain)).prefetch.empty());
}

TEST(PsPushPrefetchMessages, TruncatedOversizedOrMisplacedPrefetchesAreRejected) {
  const std::vector<std::byte> payload = encode_message(prefetching_push());
  for (FloatDecoding d : {FloatDecoding::kCopy, FloatDecoding::kView}) {
    for (size_t size = 0; size < payload.size(); ++size) {
      EXPECT_THROW(decode_message(std::span(payload).first(size), d), DataError) << size;
    }
  }
  // Layout: prefix 24, figures 36, gradient 8 + 8, row push count 4, pull
  // flag 1, min_version 8, wait_ms 4: the prefetch count at 93, then the
  // first row pull (table 4, key count 8 at 101).
  constexpr size_t kPrefetchCount = 93;
  constexpr size_t kFirstKeys = 101;
  std::vector<std::byte> bad = payload;
  const uint32_t many = 1u << 30;
  std::memcpy(bad.data() + kPrefetchCount, &many, sizeof many);
  expect_error_naming<DataError>([&] { decode_message(bad); }, "'push prefetch row pulls'");
  bad = payload;
  const uint64_t huge = uint64_t{1} << 60;
  std::memcpy(bad.data() + kFirstKeys, &huge, sizeof huge);
  expect_error_naming<DataError>([&] { decode_message(bad); }, "'push prefetch keys'");
  // A prefetch without the pull it rides with, or a nested one, is not
  // encoded at all.
  Message no_pull = prefetching_push();
  no_pull.with_pull = false;
  expect_error_naming<UsageError>([&] { encode_message(no_pull); }, "only with a pull");
  Message nested = prefetching_push();
  nested.prefetch[0].prefetch.push_back(row_pull(0, {1}));
  expect_error_naming<UsageError>([&] { encode_message(nested); }, "no rows of its own");
  // A reply whose row count exceeds its bytes.
  Message reply;
  reply.kind = Kind::kReply;
  reply.reply_to = Kind::kPush;
  reply.with_pull = true;
  std::vector<std::byte> reply_bytes = encode_message(reply);
  std::memcpy(reply_bytes.data() + reply_bytes.size() - 4, &many, sizeof many);
  expect_error_naming<DataError>([&] { decode_message(reply_bytes); },
                                 "'push reply prefetched rows'");
}

StateDict small_model() {
  StateDict model;
  model.insert("w", Tensor::from_vector({1, 2, 3, 4}, {2, 2}));
  return model;
}

const std::vector<SparseTableSpec>& two_tables() {
  static const std::vector<SparseTableSpec> tables{{"emb", 2, 0.1f}, {"ctx", 3, 0.1f}};
  return tables;
}

TEST(PsPushPrefetch, SyncRowsAreTheClosedVersionsBitForBit) {
  // 2 servers, 2 workers, Adagrad: each worker pushes gradient rows of keys
  // it pulled and prefetches keys it pushed, keys nobody pushed (created by
  // the read) and keys of both servers. The prefetched rows equal a
  // pull_rows after the step, and differ from the rows before it: they are
  // version 1's, not version 0's.
  ServerOptions options;
  options.consistency = Consistency::kSync;
  options.seed = 11;
  options.optimizer.type = "adagrad";
  PsJob job(2, 2, options);
  std::vector<std::unique_ptr<Client>> c = job.initialised_clients(small_model(), two_tables());
  const std::vector<std::vector<uint64_t>> pushed = {{10, 20, 30, 1u << 20}, {4, 5, 6}};
  const std::vector<std::vector<uint64_t>> fetched = {{10, 20, 33, 1u << 21, 30}, {5, 9, 4}};
  std::vector<std::vector<Tensor>> before(2), after(2);
  std::vector<std::vector<Tensor>> prefetched(2);
  for (int w = 0; w < 2; ++w) {
    for (size_t t = 0; t < 2; ++t) {
      const int64_t dim = two_tables()[t].dim;
      before[size_t(w)].push_back(Tensor::zeros({int64_t(pushed[t].size()), dim}));
      c[size_t(w)]->pull_rows(t, pushed[t], before[size_t(w)].back());
    }
  }
  std::exception_ptr failed;
  auto one = [&](int w) {
    Rng rng(static_cast<uint64_t>(40 + w));
    std::vector<Client::RowPush> rows;
    std::vector<Client::RowPull> pulls;
    for (size_t t = 0; t < 2; ++t) {
      const int64_t dim = two_tables()[t].dim;
      rows.push_back(
          {t, pushed[t], dtrain::testing::normal_tensor({int64_t(pushed[t].size()), dim}, rng)});
      pulls.push_back({t, fetched[t], Tensor::zeros({int64_t(fetched[t].size()), dim})});
    }
    const DensePush push{3 + w, 0.5f, 0, 1.0, 1, 0.0, {}};
    std::vector<Tensor> out{Tensor::zeros({2, 2})};
    const std::vector<Tensor> grads{dtrain::testing::normal_tensor({2, 2}, rng)};
    EXPECT_EQ(c[size_t(w)]->push_step(rows, grads, push, out, 1, nullptr, pulls), 1u);
    for (const Client::RowPull& p : pulls) prefetched[size_t(w)].push_back(p.out);
  };
  {
    std::jthread other([&] {
      try {
        one(1);
      } catch (...) {
        failed = std::current_exception();
      }
    });
    one(0);
  }
  if (failed) std::rethrow_exception(failed);
  for (int w = 0; w < 2; ++w) {
    for (size_t t = 0; t < 2; ++t) {
      SCOPED_TRACE(fmt::format("worker {} table {}", w, t));
      Tensor now = Tensor::zeros(prefetched[size_t(w)][t].shape());
      c[size_t(w)]->pull_rows(t, fetched[t], now);
      EXPECT_EQ(prefetched[size_t(w)][t].to_vector(), now.to_vector());
    }
    // Key 10 of table 0 (first pushed, first fetched) moved with version 1.
    EXPECT_NE(prefetched[size_t(w)][0].to_vector()[0], before[size_t(w)][0].to_vector()[0]);
  }
  for (auto& client : c) client->finish();
}

}  // namespace
}  // namespace dtrain::ps
