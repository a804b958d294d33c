// FramedSocket over loopback tcp: routing, every validation step with its
// exact reason, the hook, zero-copy sends, deadlines; RateLimitedLog's
// schedule. Over ipc in a private folder: frames without MAC and CRC, the
// checks that stay, and the folders refused.
#include "comm/wire/framed_socket.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/crc32c.h"
#include "core/error.h"
#include "testing/junk_frames.h"

namespace dtrain::comm::wire {
namespace {

using namespace std::chrono_literals;

std::vector<std::byte> bytes_of(std::string_view text) {
  const auto b = std::as_bytes(std::span(text.data(), text.size()));
  return {b.begin(), b.end()};
}

std::string text_of(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// A ROUTER at rank 0 of a job of 3 ranks; its hook records every rejection.
struct Server {
  explicit Server(const JobAuth& auth, uint64_t max_payload = 1024) {
    FramedSocketOptions o;
    o.name = "test router";
    o.rank = 0;
    o.limits = FrameLimits{auth.job_id(), 3, 0, max_payload};
    o.accepted = {MessageType::kData, MessageType::kHeartbeat};
    o.on_reject = [this](const RejectedFrame& f) {
      reasons.emplace_back(f.reason);
      identities.emplace_back(f.identity);
    };
    socket = std::make_unique<FramedSocket>(context, FramedSocket::Role::kRouter,
                                            "tcp://127.0.0.1:*", std::move(o), auth, log.logger());
  }
  zmq::context_t context{1};
  dtrain::testing::LineLog log;
  std::vector<std::string> reasons;
  std::vector<std::string> identities;
  std::unique_ptr<FramedSocket> socket;
};

std::unique_ptr<FramedSocket> dealer(zmq::context_t& context, const std::string& endpoint,
                                     uint32_t rank, const JobAuth& auth) {
  FramedSocketOptions o;
  o.name = fmt::format("test dealer {}", rank);
  o.rank = rank;
  o.limits = FrameLimits{auth.job_id(), 3, rank, 1024};
  o.accepted = {MessageType::kData};
  return std::make_unique<FramedSocket>(context, FramedSocket::Role::kDealer, endpoint,
                                        std::move(o), auth, Logger::null());
}

FrameHeader data_to(uint32_t receiver, uint64_t tag = 0) {
  FrameHeader h;
  h.type = MessageType::kData;
  h.receiver = receiver;
  h.tag = tag;
  return h;
}

TEST(FramedSocket, RouterAndDealersExchangeFramesByRoutingId) {
  const JobAuth auth("framed", "s3cret");
  Server server(auth);
  zmq::context_t context(1);
  auto one = dealer(context, server.socket->endpoint(), 1, auth);
  auto two = dealer(context, server.socket->endpoint(), 2, auth);
  ASSERT_TRUE(one->send({}, data_to(0, 11), bytes_of("from one")));
  ASSERT_TRUE(two->send({}, data_to(0, 22), bytes_of("from two")));
  for (int i = 0; i < 2; ++i) {
    auto frame = server.socket->receive(Deadline::after(20s));
    ASSERT_TRUE(frame.has_value());
    const uint32_t sender = frame->header.sender;
    EXPECT_EQ(frame->header.tag, sender * 11);
    EXPECT_EQ(frame->header.job_id, auth.job_id());
    EXPECT_EQ(text_of(frame->payload()), fmt::format("from {}", sender == 1 ? "one" : "two"));
    // The reply goes to the connection it came from.
    ASSERT_TRUE(server.socket->send(frame->identity, data_to(sender),
                                    bytes_of(fmt::format("reply to {}", sender))));
  }
  const auto reply1 = one->receive(Deadline::after(20s));
  const auto reply2 = two->receive(Deadline::after(20s));
  ASSERT_TRUE(reply1 && reply2);
  EXPECT_EQ(text_of(reply1->payload()), "reply to 1");
  EXPECT_EQ(text_of(reply2->payload()), "reply to 2");
  EXPECT_EQ(reply1->header.sender, 0u);
  EXPECT_EQ(server.socket->dropped(), 0u);
}

TEST(FramedSocket, LinkShaperHoldsEachSendUntilItsReleaseTime) {
  // 8 Mbit/s: two 500 kB frames cannot both leave in under 1 s (a lower
  // bound: the mechanism; no upper bound is asserted).
  const JobAuth auth("framed-shaped", "");
  Server server(auth, 1 << 20);
  zmq::context_t context(1);
  FramedSocketOptions o;
  o.name = "shaped dealer";
  o.rank = 1;
  o.limits = FrameLimits{auth.job_id(), 3, 1, 1024};
  o.link = LinkShaperOptions{8.0, 0.0};
  FramedSocket shaped(context, FramedSocket::Role::kDealer, server.socket->endpoint(), std::move(o),
                      auth, Logger::null());
  const std::vector<std::byte> payload(500'000, std::byte{7});
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(shaped.send({}, data_to(0), payload));
  ASSERT_TRUE(shaped.send({}, data_to(0), payload));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 900ms);
  for (int i = 0; i < 2; ++i) {
    const auto frame = server.socket->receive(Deadline::after(20s));
    ASSERT_TRUE(frame.has_value());
    EXPECT_EQ(frame->body.size(), payload.size());
  }
}

TEST(FramedSocket, AMovedPayloadArrivesIntact) {
  const JobAuth auth("framed-zero-copy", "");
  Server server(auth, 1 << 20);
  zmq::context_t context(1);
  auto one = dealer(context, server.socket->endpoint(), 1, auth);
  std::vector<std::byte> big(300000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::byte>(i * 7);
  const std::vector<std::byte> expected = big;
  ASSERT_TRUE(one->send({}, data_to(0), std::move(big)));
  const auto frame = server.socket->receive(Deadline::after(20s));
  ASSERT_TRUE(frame.has_value());
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), frame->payload().begin(),
                         frame->payload().end()));
}

// Each malformed message is dropped with its reason, counted, logged, handed
// to the hook with the sender's routing id, and never returned.
TEST(FramedSocket, EveryCheckDropsTheMessageWithItsReason) {
  const JobAuth auth("framed-checks", "");
  Server server(auth, /*max_payload=*/64);
  zmq::context_t context(1);
  zmq::socket_t raw(context, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.set(zmq::sockopt::routing_id, "outsider");
  raw.connect(server.socket->endpoint());
  auto send_raw = [&](const std::vector<std::vector<std::byte>>& parts) {
    for (size_t p = 0; p < parts.size(); ++p) {
      raw.send(zmq::const_buffer(parts[p].data(), parts[p].size()),
               p + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  };
  auto frame_of = [&](FrameHeader h, const std::vector<std::byte>& payload, const JobAuth& a) {
    h.job_id = a.job_id();
    const HeaderBytes head = encode_header(h, payload, a, true);
    return std::vector<std::vector<std::byte>>{{head.begin(), head.end()}, payload};
  };
  const std::vector<std::byte> payload = bytes_of("payload");
  FrameHeader h = data_to(0);
  h.sender = 1;

  send_raw({payload});                                   // one part
  send_raw({payload, payload, payload});                 // three parts
  send_raw({std::vector<std::byte>(88), payload});       // not a header
  send_raw(frame_of(h, payload, JobAuth("other", "")));  // another job
  FrameHeader far = h;
  far.sender = 3;
  send_raw(frame_of(far, payload, auth));  // a rank outside the job
  FrameHeader elsewhere = h;
  elsewhere.receiver = 2;
  send_raw(frame_of(elsewhere, payload, auth));  // addressed to another rank
  FrameHeader table = h;
  table.type = MessageType::kGoodbye;
  send_raw(frame_of(table, payload, auth));                 // a type not taken
  send_raw(frame_of(h, std::vector<std::byte>(65), auth));  // over the limit
  auto corrupted = frame_of(h, payload, auth);
  corrupted[1][0] ^= std::byte{1};
  send_raw(corrupted);                                                 // CRC mismatch
  send_raw(frame_of(h, payload, JobAuth("framed-checks", "secret")));  // a MAC, no secret here
  send_raw(frame_of(h, bytes_of("the valid one"), auth));

  const auto frame = server.socket->receive(Deadline::after(20s));
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(text_of(frame->payload()), "the valid one");
  const std::vector<std::string> expected{
      "wire frame rejected: a message of 1 parts, expected 2",
      "wire frame rejected: a message of 3 parts, expected 2",
      "wire frame rejected: bad magic 0x00000000, expected 0x4e525444 (\"DTRN\"): not a dtrain "
      "frame",
      fmt::format("wire frame rejected: job id 0x{:016x} does not match this job's 0x{:016x} (a "
                  "process of another job?)",
                  job_id_of("other"), auth.job_id()),
      "wire frame rejected: sender rank 3 is out of range for world size 3",
      "wire frame rejected: frame addressed to rank 2, this is rank 0",
      "wire frame rejected: a goodbye frame from rank 1; this receiver takes data or heartbeat",
      "wire frame rejected: payload of 65 bytes exceeds the maximum of 64 bytes",
      fmt::format("wire frame rejected: payload CRC-32C 0x{:08x} does not match the header's "
                  "0x{:08x} (corrupted in transit)",
                  crc32c(corrupted[1].data(), corrupted[1].size()),
                  crc32c(payload.data(), payload.size())),
      "wire frame rejected: frame carries a MAC but this process has no job secret (secrets "
      "differ?)"};
  ASSERT_EQ(server.reasons.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(server.reasons[i], expected[i]) << i;
    EXPECT_EQ(server.identities[i], "outsider") << i;
  }
  EXPECT_EQ(server.socket->dropped(), expected.size());
  EXPECT_EQ(server.log.count("test router: dropped an inbound frame ("), expected.size());
  EXPECT_EQ(server.log.count("test router: dropped an inbound frame (1 so far): wire frame "
                             "rejected: a message of 1 parts, expected 2"),
            1u);
}

TEST(FramedSocket, ReceiveReturnsNothingAtItsDeadline) {
  const JobAuth auth("framed-deadline", "");
  Server server(auth);
  EXPECT_FALSE(server.socket->receive(Deadline::after(50ms)).has_value());
  EXPECT_FALSE(server.socket->try_receive().has_value());
}

TEST(FramedSocket, TheHookMayThrowOutOfReceive) {
  const JobAuth auth("framed-hook", "");
  zmq::context_t context(1);
  Server server(auth);
  FramedSocketOptions o;
  o.name = "throwing dealer";
  o.rank = 1;
  o.limits = FrameLimits{auth.job_id(), 3, 1, 1024};
  o.on_reject = [](const RejectedFrame& f) {
    if (f.raw_type() == static_cast<uint8_t>(MessageType::kReject)) {
      throw CommError(-1, "test", std::string(f.reason));
    }
  };
  FramedSocket client(context, FramedSocket::Role::kDealer, server.socket->endpoint(), std::move(o),
                      auth, Logger::null());
  ASSERT_TRUE(client.send({}, data_to(0), bytes_of("hello")));
  const auto hello = server.socket->receive(Deadline::after(20s));
  ASSERT_TRUE(hello.has_value());
  FrameHeader reject;
  reject.type = MessageType::kReject;  // not taken by the client (it takes data only)
  reject.receiver = 1;
  server.socket->send(hello->identity, reject, bytes_of("go away"));
  EXPECT_THROW(client.receive(Deadline::after(20s)), CommError);
  EXPECT_EQ(client.dropped(), 1u);
}

// A folder made by mkdtemp (mode 0700), removed with what it holds.
struct TempFolder {
  TempFolder() {
    std::string pattern = (std::filesystem::temp_directory_path() / "dtrain-ipc-XXXXXX").string();
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    path = pattern;
  }
  ~TempFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string path;
};

FramedSocketOptions private_options(std::string name, uint32_t rank, const JobAuth& auth) {
  FramedSocketOptions o;
  o.name = std::move(name);
  o.rank = rank;
  o.limits = FrameLimits{auth.job_id(), 3, rank, 1024};
  o.private_ipc = true;
  return o;
}

TEST(FramedSocketPrivateIpc, FramesGoWithoutMacOrCrcAndTheOtherChecksStay) {
  const JobAuth auth("framed-private", "s3cret");
  TempFolder folder;
  const std::string endpoint = "ipc://" + folder.path + "/router";
  zmq::context_t context(1);
  dtrain::testing::LineLog log;
  std::vector<std::string> reasons;
  FramedSocketOptions ro = private_options("private router", 0, auth);
  ro.on_reject = [&](const RejectedFrame& f) { reasons.emplace_back(f.reason); };
  FramedSocket router(context, FramedSocket::Role::kRouter, endpoint, std::move(ro), auth,
                      log.logger());
  FramedSocket client(context, FramedSocket::Role::kDealer, endpoint,
                      private_options("private dealer", 1, auth), auth, Logger::null());

  zmq::socket_t raw(context, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(endpoint);
  const JobAuth no_secret("framed-private", "");
  FrameHeader h = data_to(0);
  h.sender = 1;
  h.job_id = auth.job_id();
  auto send_raw = [&](const HeaderBytes& head, const std::vector<std::byte>& payload) {
    raw.send(zmq::const_buffer(head.data(), head.size()), zmq::send_flags::sndmore);
    raw.send(zmq::const_buffer(payload.data(), payload.size()), zmq::send_flags::none);
  };
  const std::vector<std::byte> payload = bytes_of("payload");
  std::vector<std::byte> longer = payload;
  longer.push_back(std::byte{0});
  send_raw(encode_header(h, payload, no_secret, false), longer);  // length disagrees
  send_raw(encode_header(h, payload, auth, true), payload);       // signed: not on this link
  FrameHeader other = h;
  other.job_id = job_id_of("another job");
  send_raw(encode_header(other, payload, no_secret, false), payload);  // another job
  send_raw(encode_header(h, bytes_of("raw"), no_secret, false), bytes_of("raw"));
  // One connection delivers in order: the three were dropped before "raw".
  const auto first = router.receive(Deadline::after(20s));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(text_of(first->payload()), "raw");
  ASSERT_TRUE(client.send({}, data_to(0, 5), bytes_of("the valid one")));
  const auto frame = router.receive(Deadline::after(20s));
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(text_of(frame->payload()), "the valid one");
  EXPECT_EQ(frame->header.flags, 0u);  // neither CRC nor MAC
  EXPECT_EQ(frame->header.payload_crc, 0u);
  EXPECT_EQ(frame->header.tag, 5u);
  const std::vector<std::string> expected{
      "wire frame rejected: payload is 8 bytes but the header says 7",
      "wire frame rejected: frame carries a MAC but this process has no job secret (secrets "
      "differ?)",
      fmt::format("wire frame rejected: job id 0x{:016x} does not match this job's 0x{:016x} (a "
                  "process of another job?)",
                  job_id_of("another job"), auth.job_id())};
  EXPECT_EQ(reasons, expected);
  EXPECT_EQ(router.dropped(), expected.size());
  // The reply travels the same way.
  ASSERT_TRUE(router.send(frame->identity, data_to(1), bytes_of("reply")));
  const auto reply = client.receive(Deadline::after(20s));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(text_of(reply->payload()), "reply");
  EXPECT_EQ(reply->header.flags, 0u);
}

// Constructing a private socket at `endpoint` throws ConfigError holding `what`.
void expect_refused(const std::string& endpoint, const std::string& what) {
  const JobAuth auth("framed-refused", "s3cret");
  zmq::context_t context(1);
  for (const auto role : {FramedSocket::Role::kRouter, FramedSocket::Role::kDealer}) {
    try {
      FramedSocket socket(context, role, endpoint, private_options("refused socket", 0, auth), auth,
                          Logger::null());
      ADD_FAILURE() << endpoint << " was not refused";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("refused socket: "), std::string::npos) << e.what();
    }
  }
}

TEST(FramedSocketPrivateIpc, AFolderOthersMayEnterIsRefused) {
  TempFolder folder;
  ASSERT_EQ(chmod(folder.path.c_str(), 0755), 0);
  expect_refused("ipc://" + folder.path + "/s",
                 fmt::format("the ipc folder '{}' is open to group or others (owner uid {}, "
                             "mode 0755; this process runs as uid {})",
                             folder.path, geteuid(), geteuid()));
  ASSERT_EQ(chmod(folder.path.c_str(), 0710), 0);
  expect_refused("ipc://" + folder.path + "/s", "mode 0710");
}

TEST(FramedSocketPrivateIpc, AFolderOfAnotherUserASymlinkOrNoFolderIsRefused) {
  TempFolder folder;
  const std::string link = folder.path + "/link";
  std::filesystem::create_directory(folder.path + "/real");
  ASSERT_EQ(chmod((folder.path + "/real").c_str(), 0700), 0);
  std::filesystem::create_directory_symlink(folder.path + "/real", link);
  expect_refused("ipc://" + link + "/s", "is not a directory (a symlink?)");
  expect_refused("ipc://" + folder.path + "/absent/s", "cannot check the ipc folder");
  expect_refused("tcp://127.0.0.1:0", "need an ipc endpoint in a private folder");
  if (geteuid() == 0) {  // only root can give a folder away
    const std::string theirs = folder.path + "/theirs";
    std::filesystem::create_directory(theirs);
    ASSERT_EQ(chmod(theirs.c_str(), 0700), 0);
    ASSERT_EQ(chown(theirs.c_str(), 65534, 65534), 0);
    expect_refused("ipc://" + theirs + "/s", "belongs to another user (owner uid 65534");
  }
}

TEST(FramedSocketPrivateIpc, IsRefusedWithCurve) {
  const JobAuth auth("framed-curve", "s3cret", /*encrypt=*/true);
  TempFolder folder;
  zmq::context_t context(1);
  EXPECT_THROW(FramedSocket(context, FramedSocket::Role::kRouter, "ipc://" + folder.path + "/s",
                            private_options("curve", 0, auth), auth, Logger::null()),
               ConfigError);
}

TEST(MessageTypes, DescribeAndContain) {
  const MessageTypes one{MessageType::kRegister};
  EXPECT_TRUE(one.contains(MessageType::kRegister));
  EXPECT_FALSE(one.contains(MessageType::kTable));
  EXPECT_EQ(one.describe(), "register");
  EXPECT_EQ(
      (MessageTypes{MessageType::kAbort, MessageType::kData, MessageType::kGoodbye}.describe()),
      "data, goodbye or abort");
}

TEST(RateLimitedLog, TheFirstSixteenThenEveryThousandTwentyFourth) {
  dtrain::testing::LineLog log;
  RateLimitedLog drops(log.logger(), "rank 3: dropped an inbound frame");
  for (int i = 0; i < 100000; ++i) drops.add("junk");
  EXPECT_EQ(drops.count(), 100000u);
  EXPECT_EQ(log.size(), 16u + 100000u / 1024u);  // 16 + 97 lines
  EXPECT_EQ(log.count("rank 3: dropped an inbound frame (16 so far): junk"), 1u);
  EXPECT_EQ(log.count("(17 so far)"), 0u);
  EXPECT_EQ(log.count("rank 3: dropped an inbound frame (1024 so far): junk"), 1u);
  EXPECT_TRUE(RateLimitedLog::logged(2048));
  EXPECT_FALSE(RateLimitedLog::logged(2047));
}

}  // namespace
}  // namespace dtrain::comm::wire
