#include "ps/messages.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "core/error.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

std::vector<Message> samples() {
  std::vector<Message> out;
  Message init;
  init.kind = Kind::kInit;
  init.worker = 2;
  init.request_id = 9;
  init.dense = {{"w", {2, 3}}, {"b", {3}}};
  init.tables = {{"emb", 8, 0.05f}};
  init.floats = {1, 2, 3, 4};
  out.push_back(init);
  Message pull;
  pull.kind = Kind::kPull;
  pull.min_version = 12;
  pull.wait_ms = 3000;
  out.push_back(pull);
  Message push;
  push.kind = Kind::kPush;
  push.version = 11;
  push.samples = 64;
  push.lr = 0.05f;
  push.loss_sum = 41.5;
  push.correct = 60;
  push.compute_s = 0.375;
  push.floats = {0.5f, -0.25f};
  out.push_back(push);
  Message rows;
  rows.kind = Kind::kPushRows;
  rows.version = 9;
  rows.table = 1;
  rows.lr = 0.1f;
  rows.keys = {1, uint64_t{1} << 63};
  rows.floats = {1, 2, 3, 4};
  out.push_back(rows);
  Message set;
  set.kind = Kind::kSetState;
  set.state.insert("dense.values", Tensor::from_vector({1, 2, 3}, {3}));
  set.state.metadata()["version"] = "4";
  out.push_back(set);
  Message reply;
  reply.kind = Kind::kReply;
  reply.reply_to = Kind::kPull;
  reply.version = 12;
  reply.min_clock = 3;
  reply.totals = {123.25, 40, 96, {{32, 0.25, true}, {0, 0.0, false}, {64, 1.5, true}}};
  reply.floats = {7, 8};
  out.push_back(reply);
  Message stats;
  stats.kind = Kind::kReply;
  stats.reply_to = Kind::kStats;
  stats.stats.server = 1;
  stats.stats.workers = {WorkerState::kLive, WorkerState::kDead};
  stats.stats.clocks = {5, 2};
  stats.stats.min_clock = 5;
  stats.stats.clock_us = 1765000000123456;
  out.push_back(stats);
  Message error;
  error.kind = Kind::kReply;
  error.reply_to = Kind::kPush;
  error.status = ReplyStatus::kError;
  error.error = "duplicate push from worker 1 for version 5";
  out.push_back(error);
  Message compressed = push;
  compressed.kind = Kind::kPushCompressed;
  compressed.floats.clear();
  compressed.pieces = {{false, {1.5f, -2.0f}, {}},
                       {true, {}, {std::byte{3}, std::byte{0}, std::byte{255}}},
                       {true, {}, {}}};
  out.push_back(compressed);
  // A range taken over: the request and the reply carry its term.
  Message termed = pull;
  termed.term = 2;
  out.push_back(termed);
  Message termed_reply = reply;
  termed_reply.term = (uint64_t{1} << 40) + 3;
  out.push_back(termed_reply);
  return out;
}

TEST(PsMessages, RoundTripsEveryKind) {
  for (const Message& m : samples()) {
    const Message back = decode_message(encode_message(m));
    EXPECT_EQ(back.kind, m.kind);
    EXPECT_EQ(back.reply_to, m.kind == Kind::kReply ? m.reply_to : Kind::kHeartbeat);
    EXPECT_EQ(back.status, m.status);
    EXPECT_EQ(back.worker, m.worker);
    EXPECT_EQ(back.request_id, m.request_id);
    EXPECT_EQ(back.version, m.version);
    EXPECT_EQ(back.term, m.term);
    EXPECT_EQ(back.floats, m.floats);
    EXPECT_EQ(back.keys, m.keys);
    EXPECT_EQ(back.min_version, m.min_version);
    EXPECT_EQ(back.samples, m.samples);
    EXPECT_EQ(back.lr, m.lr);
    EXPECT_EQ(back.loss_sum, m.loss_sum);
    EXPECT_EQ(back.correct, m.correct);
    EXPECT_EQ(back.totals.loss_sum, m.totals.loss_sum);
    EXPECT_EQ(back.totals.correct, m.totals.correct);
    EXPECT_EQ(back.totals.samples, m.totals.samples);
    EXPECT_EQ(back.compute_s, m.compute_s);
    ASSERT_EQ(back.totals.workers.size(), m.totals.workers.size());
    for (size_t w = 0; w < m.totals.workers.size(); ++w) {
      EXPECT_EQ(back.totals.workers[w].samples, m.totals.workers[w].samples);
      EXPECT_EQ(back.totals.workers[w].compute_s, m.totals.workers[w].compute_s);
      EXPECT_EQ(back.totals.workers[w].counted, m.totals.workers[w].counted);
    }
    EXPECT_EQ(back.error, m.error);
    EXPECT_EQ(back.dense.size(), m.dense.size());
    EXPECT_EQ(back.tables.size(), m.tables.size());
    EXPECT_EQ(back.state.size(), m.state.size());
    EXPECT_EQ(back.stats.clocks, m.stats.clocks);
    EXPECT_EQ(back.stats.workers, m.stats.workers);
    EXPECT_EQ(back.stats.clock_us, m.stats.clock_us);
    ASSERT_EQ(back.pieces.size(), m.pieces.size());
    for (size_t i = 0; i < m.pieces.size(); ++i) {
      EXPECT_EQ(back.pieces[i].compressed, m.pieces[i].compressed);
      EXPECT_EQ(back.pieces[i].dense, m.pieces[i].dense);
      EXPECT_EQ(back.pieces[i].message, m.pieces[i].message);
    }
  }
}

TEST(PsMessages, CompressedPushPiecesAreFramedStrictly) {
  Message m;
  m.kind = Kind::kPushCompressed;
  m.samples = 2;
  m.lr = 0.1f;
  m.pieces = {{true, {}, {std::byte{1}, std::byte{2}}}};
  const auto good = encode_message(m);
  // The piece's encoding byte follows the 24-byte prefix, 36 bytes of
  // figures and the u32 piece count.
  constexpr size_t kEncoding = 24 + 36 + 4;
  auto bad = good;
  bad[kEncoding] = std::byte{2};
  testing::expect_error<DataError>(
      [&] { decode_message(bad); },
      "ps message: compressed push piece 0 has encoding 2; must be 0 (dense) or 1 (compressed)");
  // A piece count the bytes left cannot hold is refused before allocating.
  bad = good;
  bad[kEncoding - 1] = std::byte{0x7f};
  EXPECT_THROW(decode_message(bad), DataError);
  // A message length past the end.
  bad = good;
  bad[kEncoding + 1] = std::byte{3};
  EXPECT_THROW(decode_message(bad), DataError);
}

TEST(PsMessages, EveryTruncationIsRejected) {
  for (const Message& m : samples()) {
    const auto bytes = encode_message(m);
    for (size_t size = 0; size < bytes.size(); ++size) {
      EXPECT_THROW(decode_message(std::span(bytes).first(size)), DataError)
          << to_string(m.kind) << " cut to " << size << " of " << bytes.size();
    }
  }
}

TEST(PsMessages, TrailingBytesAreRejected) {
  auto bytes = encode_message(samples()[1]);
  bytes.push_back(std::byte{0});
  testing::expect_error<DataError>(
      [&] { decode_message(bytes); },
      "ps message: 1 bytes after the end of the pull body (at offset 36)");
}

TEST(PsMessages, UnknownKindStatusAndReservedBytesAreRejected) {
  auto bytes = encode_message(samples()[1]);
  bytes[0] = std::byte{42};
  testing::expect_error<DataError>([&] { decode_message(bytes); }, "ps message: unknown kind 42");
  bytes = encode_message(samples()[1]);
  bytes[3] = std::byte{2};
  testing::expect_error<DataError>([&] { decode_message(bytes); },
                                   "ps message: flags are 0x02; only bit 0 (term) is known");
  bytes = encode_message(samples()[1]);
  bytes[1] = std::byte{1};
  testing::expect_error<DataError>(
      [&] { decode_message(bytes); },
      "ps message: pull request has status 1 and reply_to 0; both must be 0");
  bytes = encode_message(samples()[5]);
  bytes[1] = std::byte{9};
  testing::expect_error<DataError>([&] { decode_message(bytes); },
                                   "ps message: unknown reply status 9");
}

TEST(PsMessages, TermZeroSendsTheBytesOfBeforeTermsAndATermIsFramedStrictly) {
  // Term 0 (a range's first primary) leaves the flag clear: the bytes a job
  // without takeovers sent before terms existed.
  Message pull = samples()[1];
  const auto plain = encode_message(pull);
  EXPECT_EQ(plain[3], std::byte{0});
  EXPECT_EQ(plain.size(), 24 + 12u);
  pull.term = 7;
  const auto termed = encode_message(pull);
  ASSERT_EQ(termed.size(), plain.size() + 8);
  EXPECT_EQ(termed[3], std::byte{1});
  EXPECT_EQ(termed[24], std::byte{7});
  EXPECT_EQ(decode_message(termed).term, 7u);
  // The flag set with the term cut off: the pull body's 12 bytes are read
  // as the term and the body is short.
  auto forged = plain;
  forged[3] = std::byte{1};
  EXPECT_THROW(decode_message(forged), DataError);
  forged.resize(24 + 4);
  testing::expect_error<DataError>(
      [&] { decode_message(forged); },
      "ps message: field 'term' needs 8 bytes at offset 24, only 4 left");
  // The flag set with a zero term: a second encoding of term 0, refused.
  auto zero = termed;
  std::fill(zero.begin() + 24, zero.begin() + 32, std::byte{0});
  testing::expect_error<DataError>(
      [&] { decode_message(zero); },
      "ps message: the term flag is set with term 0 (term 0 is sent without it)");
  // A term without the flag: 8 trailing bytes.
  auto unflagged = termed;
  unflagged[3] = std::byte{0};
  EXPECT_THROW(decode_message(unflagged), DataError);
}

TEST(PsMessages, OversizedCountsAreRejectedBeforeAllocating) {
  // push: prefix 24, samples 8, lr 4, loss_sum 8, correct 8, compute_s 8,
  // count 8 (then 2 floats and the 5-byte tail: no rows, no pull)
  auto bytes = encode_message(samples()[2]);
  const uint64_t huge = uint64_t{1} << 60;
  std::memcpy(bytes.data() + 60, &huge, sizeof huge);
  testing::expect_error<DataError>(
      [&] { decode_message(bytes); },
      "ps message: field 'push gradient' at offset 60: count 1152921504606846976 of 4-byte "
      "elements needs more than the 13 bytes left");
  // pull reply: prefix 24, min_clock 8, loss_sum 8, correct 8, samples 8,
  // worker count 4 (then 3 x 17 bytes of steps, the values' count 8 and 2 x 4)
  bytes = encode_message(samples()[5]);
  const uint32_t many = 1u << 30;
  std::memcpy(bytes.data() + 56, &many, sizeof many);
  testing::expect_error<DataError>(
      [&] { decode_message(bytes); },
      "ps message: field 'pull worker steps' needs 18253611008 bytes at offset 60, only 67 left");
}

TEST(PsMessages, PerWorkerComputeTimesMustBeFiniteAndNotNegative) {
  Message push = samples()[2];
  const std::pair<double, const char*> bad[] = {{-0.5, "-0.5"},
                                                {std::numeric_limits<double>::infinity(), "inf"},
                                                {std::numeric_limits<double>::quiet_NaN(), "nan"}};
  for (const auto& [value, text] : bad) {
    push.compute_s = value;
    testing::expect_error<DataError>(
        [&] { decode_message(encode_message(push)); },
        fmt::format("ps message: push compute_s is {}; must be a finite number >= 0", text));
  }
  Message reply = samples()[5];
  reply.totals.workers[1].compute_s = std::numeric_limits<double>::infinity();
  testing::expect_error<DataError>(
      [&] { decode_message(encode_message(reply)); },
      "ps message: pull worker compute_s is inf; must be a finite number >= 0");
  reply = samples()[5];
  reply.totals.workers[2].samples = -3;
  testing::expect_error<DataError>([&] { decode_message(encode_message(reply)); },
                                   "ps message: pull worker 2 samples is -3; must be >= 0");
  reply.totals.workers.clear();  // before the first version: no workers
  EXPECT_TRUE(decode_message(encode_message(reply)).totals.workers.empty());
}

TEST(PsMessages, NonFiniteLearningRateAndNegativeSamplesAreRejected) {
  Message push = samples()[2];
  push.lr = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(decode_message(encode_message(push)), DataError);
  push.lr = 0.1f;
  push.samples = -1;
  testing::expect_error<DataError>([&] { decode_message(encode_message(push)); },
                                   "ps message: push samples is -1; must be >= 0");
}

TEST(PsMessages, PushCorrectCountsOutOfRangeAreRejectedADivergedLossIsNot) {
  Message push = samples()[2];
  push.loss_sum = std::numeric_limits<double>::quiet_NaN();  // a diverged loss passes
  EXPECT_TRUE(std::isnan(decode_message(encode_message(push)).loss_sum));
  push.correct = 65;
  testing::expect_error<DataError>([&] { decode_message(encode_message(push)); },
                                   "ps message: push correct is 65; must be in [0, samples = 64]");
  push.correct = -1;
  testing::expect_error<DataError>([&] { decode_message(encode_message(push)); },
                                   "ps message: push correct is -1; must be in [0, samples = 64]");
}

TEST(PsMessages, RandomGarbageNeverCrashes) {
  Rng rng(5);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::byte> bytes(rng.below(96));
    for (auto& b : bytes) b = static_cast<std::byte>(rng.below(256));
    if (!bytes.empty()) bytes[0] = static_cast<std::byte>(1 + rng.below(10));
    try {
      decode_message(bytes);
    } catch (const DataError&) {
    }
  }
}

}  // namespace
}  // namespace dtrain::ps
