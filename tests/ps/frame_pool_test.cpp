// ps/frame_pool.h: payload buffers reused across frames, and
// encode_message into a reused buffer (the bytes exactly a fresh encoding's,
// whatever the buffer held; the decoder's bounds unchanged).
#include "ps/frame_pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "core/error.h"
#include "ps/messages.h"
#include "testing/expect_error.h"

namespace dtrain::ps {
namespace {

using dtrain::testing::expect_error_naming;

// A buffer of `capacity` bytes, handed to the pool and released (as ZeroMQ
// releases a sent frame's payload); returns its data pointer.
const std::byte* give(FramePool& pool, size_t capacity) {
  std::vector<std::byte> buffer;
  buffer.reserve(capacity);
  buffer.resize(capacity / 2, std::byte{7});
  const std::byte* data = buffer.data();
  pool.share(std::move(buffer)).reset();
  return data;
}

TEST(FramePool, AReleasedBufferComesBackClearedWithItsCapacity) {
  auto pool = FramePool::create();
  EXPECT_EQ(pool->take(100).capacity(), 0u);  // nothing held yet: a new one
  const std::byte* data = give(*pool, 4096);
  EXPECT_EQ(pool->buffers(), 1u);
  EXPECT_EQ(pool->bytes(), 4096u);
  const std::vector<std::byte> again = pool->take(1000);
  EXPECT_EQ(again.data(), data);
  EXPECT_TRUE(again.empty());
  EXPECT_EQ(again.capacity(), 4096u);
  EXPECT_EQ(pool->buffers(), 0u);
  EXPECT_EQ(pool->bytes(), 0u);
}

TEST(FramePool, TakesTheSmallestBufferThatFitsElseTheLargest) {
  auto pool = FramePool::create();
  const std::byte* small = give(*pool, 128);
  const std::byte* large = give(*pool, 1 << 16);
  const std::byte* middle = give(*pool, 4096);
  EXPECT_EQ(pool->take(100).data(), small);
  EXPECT_EQ(pool->take(2000).data(), middle);
  give(*pool, 128);
  EXPECT_EQ(pool->take(1 << 20).data(), large);  // none fits: the largest, to grow
}

TEST(FramePool, KeepsAtMostItsBufferAndByteLimits) {
  auto pool = FramePool::create();
  for (size_t i = 0; i < FramePool::kMaxBuffers + 5; ++i) give(*pool, 256);
  EXPECT_EQ(pool->buffers(), FramePool::kMaxBuffers);
  auto other = FramePool::create();
  give(*other, FramePool::kMaxBytes / 2 + 1);
  give(*other, FramePool::kMaxBytes / 2 + 1);  // over the byte limit: freed
  EXPECT_EQ(other->buffers(), 1u);
}

// ZeroMQ releases a frame on its I/O thread, possibly after the endpoint
// that made it (and its reference to the pool) is gone.
TEST(FramePool, ABufferReleasedOnAnotherThreadAfterItsOwnerLetGoComesBack) {
  std::weak_ptr<FramePool> watch;
  std::shared_ptr<const std::vector<std::byte>> frame;
  {
    auto pool = FramePool::create();
    watch = pool;
    std::vector<std::byte> buffer = pool->take(64);
    buffer.resize(64, std::byte{1});
    frame = pool->share(std::move(buffer));
  }
  ASSERT_FALSE(watch.expired());  // the frame keeps its pool
  std::thread([&] { frame.reset(); }).join();
  EXPECT_TRUE(watch.expired());
}

Message row_push(const std::vector<float>& grads) {
  Message m;
  m.kind = Kind::kPushRows;
  m.request_id = 9;
  m.version = 3;
  m.table = 1;
  m.lr = 0.5f;
  m.keys = {5, 1u << 20, 77};
  m.float_parts = {std::as_bytes(std::span<const float>(grads))};
  return m;
}

TEST(FramePool, EncodingIntoAReusedBufferGivesAFreshEncodingsBytes) {
  std::vector<float> grads(3 * 16);
  std::iota(grads.begin(), grads.end(), -7.25f);
  Message reply;
  reply.kind = Kind::kReply;
  reply.reply_to = Kind::kPullRows;
  reply.request_id = 4;
  reply.float_parts = {std::as_bytes(std::span<const float>(grads))};
  for (const Message& m : {row_push(grads), reply}) {
    const std::vector<std::byte> fresh = encode_message(m);
    for (size_t held : {size_t{0}, size_t{5}, fresh.size(), fresh.size() * 3}) {
      std::vector<std::byte> old(held, std::byte{0xAB});  // a previous frame's bytes
      EXPECT_EQ(encode_message(m, std::move(old)), fresh) << held;
    }
  }
}

TEST(FramePool, APooledRowPushDecodesAndItsTruncationsAndExtensionsAreRejected) {
  std::vector<float> grads(3 * 16, 0.25f);
  auto pool = FramePool::create();
  give(*pool, 1 << 16);  // a larger frame's buffer, reused
  const Message m = row_push(grads);
  auto payload = encode_pooled(*pool, m);
  const Message back = decode_message(*payload);
  EXPECT_EQ(back.keys, m.keys);
  EXPECT_EQ(back.floats, grads);
  std::vector<std::byte> longer = *payload;
  longer.push_back(std::byte{0});
  expect_error_naming<DataError>([&] { decode_message(longer); }, "after the end");
  const std::span<const std::byte> whole(*payload);
  expect_error_naming<DataError>([&] { decode_message(whole.first(whole.size() - 1)); },
                                 "push_rows gradient");
  for (size_t size = 0; size < whole.size(); ++size) {
    EXPECT_THROW(decode_message(whole.first(size)), DataError) << size;
  }
}

}  // namespace
}  // namespace dtrain::ps
