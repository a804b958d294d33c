#include "comm/transport/inproc_transport.h"

#include <gtest/gtest.h>

#include <thread>

#include "core/error.h"

namespace dtrain::comm {
namespace {

std::vector<std::byte> bytes(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (const int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

TEST(InProcTransport, DeliversInOrderPerTagAndKeepsTagsApart) {
  InProcHub hub(2);
  auto a = hub.transport(0);
  auto b = hub.transport(1);
  const Deadline deadline = Deadline::after(std::chrono::seconds(10));
  a->send(1, 7, bytes({1}), "test", deadline);
  a->send(1, 8, bytes({9}), "test", deadline);
  a->send(1, 7, bytes({2, 3}), "test", deadline);
  EXPECT_EQ(b->recv(0, 8, "test", deadline), bytes({9}));
  EXPECT_EQ(b->recv(0, 7, "test", deadline), bytes({1}));
  std::vector<std::byte> out(2);
  b->recv_into(0, 7, out, "test", deadline);
  EXPECT_EQ(out, bytes({2, 3}));
}

TEST(InProcTransport, RecvTimesOutNamingThePeerAndTag) {
  InProcHub hub(3);
  auto a = hub.transport(0);
  try {
    a->recv(2, 0x2a, "allreduce", Deadline::after(std::chrono::milliseconds(50)));
    FAIL() << "recv returned without a message";
  } catch (const TimeoutError& e) {
    EXPECT_EQ(e.peer(), 2);
    EXPECT_NE(std::string(e.what()).find("tag 0x2a from rank 2"), std::string::npos) << e.what();
  }
  // The transport is failed after a CommError.
  EXPECT_THROW(a->send(1, 1, bytes({1}), "x", Deadline::never()), CommError);
}

TEST(InProcTransport, KillWakesAWaitingPeerWithANamedError) {
  InProcHub hub(2);
  auto a = hub.transport(0);
  auto b = hub.transport(1);
  b->send(0, 5, bytes({4}), "test", Deadline::never());
  std::jthread killer([&] { hub.kill(1); });
  // The message sent before death is still delivered; then the death shows.
  EXPECT_EQ(a->recv(1, 5, "test", Deadline::never()), bytes({4}));
  try {
    a->recv(1, 5, "allreduce", Deadline::never());
    FAIL() << "recv from a dead rank returned";
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_NE(std::string(e.what()).find("rank 1 died"), std::string::npos) << e.what();
  }
  EXPECT_THROW(b->send(0, 5, bytes({1}), "test", Deadline::never()), CommError);
}

TEST(InProcTransport, RecvIntoRejectsAWrongSize) {
  InProcHub hub(2);
  auto a = hub.transport(0);
  auto b = hub.transport(1);
  a->send(1, 1, bytes({1, 2, 3}), "test", Deadline::never());
  std::vector<std::byte> out(2);
  EXPECT_THROW(b->recv_into(0, 1, out, "test", Deadline::never()), CommError);
}

TEST(InProcTransport, EachRankIsTakenOnce) {
  InProcHub hub(2);
  auto a = hub.transport(0);
  EXPECT_THROW(hub.transport(0), UsageError);
  EXPECT_THROW(hub.transport(2), UsageError);
}

}  // namespace
}  // namespace dtrain::comm
