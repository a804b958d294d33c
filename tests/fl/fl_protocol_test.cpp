#include "fl/fl_protocol.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/rng.h"
#include "testing/expect_error.h"

namespace dtrain::fl {
namespace {

using testing::expect_error;

FlTask sample_task() {
  FlTask t;
  t.round = 7;
  t.deadline_ms = 2000;
  t.training.epochs = 2;
  t.training.batch = 10;
  t.training.proximal_mu = 0.01;
  t.training.max_steps = 5;
  t.weights = {1.0f, -2.5f, 3.25f};
  return t;
}

ClientUpdate sample_update() {
  ClientUpdate u;
  u.client = 3;
  u.round = 7;
  u.samples = 600;
  u.loss = 0.25;
  u.steps = 60;
  u.partial = true;
  u.delta = {0.5f, -0.125f};
  return u;
}

TEST(FlProtocol, EveryKindRoundTrips) {
  FlMessage join = decode_fl_message(encode_join(42));
  EXPECT_EQ(join.kind, FlKind::kJoin);
  EXPECT_EQ(join.client, 42);

  FlMessage task = decode_fl_message(encode_task(sample_task()));
  ASSERT_EQ(task.kind, FlKind::kTask);
  EXPECT_EQ(task.task.round, 7);
  EXPECT_EQ(task.task.deadline_ms, 2000);
  EXPECT_EQ(task.task.training.epochs, 2);
  EXPECT_EQ(task.task.training.batch, 10);
  EXPECT_EQ(task.task.training.proximal_mu, 0.01);
  EXPECT_EQ(task.task.training.max_steps, 5);
  EXPECT_EQ(task.task.weights, sample_task().weights);

  FlMessage update = decode_fl_message(encode_update(sample_update()));
  ASSERT_EQ(update.kind, FlKind::kUpdate);
  EXPECT_EQ(update.update.client, 3);
  EXPECT_EQ(update.update.round, 7);
  EXPECT_EQ(update.update.samples, 600);
  EXPECT_EQ(update.update.loss, 0.25);
  EXPECT_EQ(update.update.steps, 60);
  EXPECT_TRUE(update.update.partial);
  EXPECT_EQ(update.update.delta, sample_update().delta);

  const std::vector<std::byte> upload = {std::byte{1}, std::byte{2}, std::byte{250}};
  FlMessage compressed = decode_fl_message(encode_compressed_update(sample_update(), upload));
  ASSERT_EQ(compressed.kind, FlKind::kUpdateCompressed);
  EXPECT_EQ(compressed.update.client, 3);
  EXPECT_EQ(compressed.update.round, 7);
  EXPECT_EQ(compressed.update.samples, 600);
  EXPECT_TRUE(compressed.update.partial);
  EXPECT_TRUE(compressed.update.delta.empty());
  EXPECT_EQ(compressed.upload, upload);

  EXPECT_EQ(decode_fl_message(encode_wait(4)).kind, FlKind::kWait);
  EXPECT_EQ(decode_fl_message(encode_wait(4)).rounds_done, 4);
  EXPECT_EQ(decode_fl_message(encode_done(9)).kind, FlKind::kDone);
  EXPECT_EQ(decode_fl_message(encode_done(9)).rounds_done, 9);
}

TEST(FlProtocol, EveryTruncationIsADataError) {
  for (const std::vector<std::byte>& whole :
       {encode_join(1), encode_task(sample_task()), encode_update(sample_update()), encode_wait(1),
        encode_done(1),
        encode_compressed_update(sample_update(), std::vector<std::byte>(5, std::byte{7}))}) {
    for (size_t n = 0; n < whole.size(); ++n) {
      std::span<const std::byte> cut(whole.data(), n);
      EXPECT_THROW(decode_fl_message(cut), DataError) << "length " << n << " of " << whole.size();
    }
  }
}

TEST(FlProtocol, TrailingBytesAreADataError) {
  std::vector<std::byte> bytes = encode_join(1);
  bytes.push_back(std::byte{0});
  expect_error<DataError>([&] { decode_fl_message(bytes); },
                          "fl message: 1 bytes after the end of the join body (at offset 12)");
}

TEST(FlProtocol, BadFieldsNameTheFieldAndTheValue) {
  std::vector<std::byte> kind = encode_join(1);
  kind[0] = std::byte{10};
  expect_error<DataError>([&] { decode_fl_message(kind); },
                          "fl message: field 'kind' is 10, expected 1 (join) to 9 (secagg answer)");
  std::vector<std::byte> reserved = encode_join(1);
  reserved[2] = std::byte{1};
  expect_error<DataError>([&] { decode_fl_message(reserved); },
                          "fl message: field 'reserved' is 0/1, expected 0");
  expect_error<DataError>([&] { decode_fl_message(encode_join(-2)); },
                          "fl message: field 'join client' is -2, expected at least 0");
  FlTask t = sample_task();
  t.training.proximal_mu = std::numeric_limits<double>::quiet_NaN();
  expect_error<DataError>([&] { decode_fl_message(encode_task(t)); },
                          "fl message: field 'task proximal_mu' is nan, expected a finite value "
                          ">= 0");
  t = sample_task();
  t.round = 0;
  expect_error<DataError>([&] { decode_fl_message(encode_task(t)); },
                          "fl message: field 'task round' is 0, expected at least 1");
  std::vector<std::byte> partial = encode_update(sample_update());
  partial[4 + 40] = std::byte{2};  // kind + reserved, then five 8-byte fields
  expect_error<DataError>([&] { decode_fl_message(partial); },
                          "fl message: field 'update partial' is 2, expected 0 or 1");
}

TEST(FlProtocol, AHugeCountIsRefusedBeforeAllocating) {
  ClientUpdate u = sample_update();
  std::vector<std::byte> bytes = encode_update(u);
  // The delta's u64 count sits after kind, reserved, five i64/f64 and the partial byte.
  const size_t at = 4 + 40 + 1;
  const uint64_t huge = uint64_t{1} << 62;
  std::memcpy(bytes.data() + at, &huge, sizeof huge);  // little-endian hosts only (as dtrain)
  EXPECT_THROW(decode_fl_message(bytes), DataError);
}

// Random byte flips and cuts of valid payloads: the decoder either accepts
// (a flip in a float) or throws DataError, never anything else.
TEST(FlProtocol, FlippedAndCutPayloadsNeverCrash) {
  Rng rng(12);
  const std::vector<std::vector<std::byte>> seeds = {encode_join(5), encode_task(sample_task()),
                                                     encode_update(sample_update()), encode_wait(2),
                                                     encode_done(3)};
  for (int i = 0; i < 20000; ++i) {
    std::vector<std::byte> bytes = seeds[rng.next_u64() % seeds.size()];
    const int flips = 1 + static_cast<int>(rng.next_u64() % 4);
    for (int f = 0; f < flips; ++f) {
      bytes[rng.next_u64() % bytes.size()] = static_cast<std::byte>(rng.next_u64());
    }
    if (rng.next_u64() % 4 == 0) bytes.resize(rng.next_u64() % (bytes.size() + 1));
    try {
      decode_fl_message(bytes);
    } catch (const DataError&) {
    }
  }
}

}  // namespace
}  // namespace dtrain::fl
