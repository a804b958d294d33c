// ZmqTransport's tcp lanes (zmq_transport.h, "Tcp lanes"; tcp_lane.h) on
// loopback:
// - two transports over tcp: messages of every size (MACed with both
//   GcmTagger and libsodium's GCM where the CPU has it), two threads
//   receiving different tags from one peer at once (spinning readers), and
//   both ranks sending 8 MiB to each other before either receives (sends
//   never wait for the peer), payloads sent in two parts (send_parts);
// - recv_into()/recv_parts() reading the awaited frame straight into the
//   caller's buffers while frames on other tags queue, with MAC and CRC;
// - a hand-made rank 0 whose first lane connection says a hello that does
//   not answer that connection's challenge (one recorded from another
//   connection, or the previous wire version's hello without one): rank 1
//   closes it, and the hand-made rank's second, honest connection becomes
//   the lane;
// - a hand-made rank 0 that speaks the lane protocol (offer over ZeroMQ,
//   hello on the lane) and then writes one crafted frame: a valid one is
//   delivered; a truncated one (the connection closes mid-payload), an
//   oversized one, one signed with another secret and one that skips a
//   sequence number each fail rank 1's receive at once with a CommError
//   naming rank 0 and the fault, through recv() and through recv_parts()
//   (the payload read straight into the caller's buffers);
// - a lane's socket buffers are the requested size, or the kernel's own.
#include "comm/transport/tcp_lane.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "comm/rendezvous/rendezvous.h"
#include "comm/transport/zmq_transport.h"
#include "comm/wire/wire.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;

constexpr auto kDeadline = 20s;

ZmqTransportOptions lane_options(int rank, int world) {
  ZmqTransportOptions o;
  o.rank = rank;
  o.world_size = world;
  o.prefer_ipc = false;  // loopback tcp: the lanes' path
  o.heartbeat_interval = 100ms;
  // Long: under sanitizers a thread can be off the CPU for seconds; the
  // calls' own deadlines bound every wait.
  o.heartbeat_timeout = 60s;
  o.max_message_bytes = 16 << 20;
  return o;
}

std::vector<std::byte> pattern(size_t size, int seed) {
  std::vector<std::byte> out(size);
  for (size_t i = 0; i < size; ++i) out[i] = static_cast<std::byte>((i * 131 + seed * 7) % 251);
  return out;
}

std::vector<std::unique_ptr<ZmqTransport>> make_pair_over_tcp(
    const JobAuth& auth, std::chrono::microseconds spin = std::chrono::microseconds{0}) {
  RendezvousServer server("127.0.0.1", 0, 2, auth, Logger::null());
  std::vector<std::unique_ptr<ZmqTransport>> ranks;
  for (int r = 0; r < 2; ++r) {
    ZmqTransportOptions options = lane_options(r, 2);
    options.lane_spin = spin;
    ranks.push_back(std::make_unique<ZmqTransport>(options, auth, Logger::null()));
  }
  std::vector<std::future<void>> connected;
  for (int r = 0; r < 2; ++r) {
    connected.push_back(std::async(std::launch::async, [&, r] {
      ranks[r]->connect(rendezvous(server.address(), ranks[r]->local_endpoint(), 2, auth,
                                   Deadline::after(kDeadline), Logger::null()));
    }));
  }
  for (auto& c : connected) c.get();
  return ranks;
}

TEST(TcpLane, SizesTagsAndThreads) {
  const JobAuth auth("lane-sizes", "lane secret");
  // The readers spin a little before they sleep (lane_spin).
  auto ranks = make_pair_over_tcp(auth, 20us);
  // Sizes around the socket buffers, so that some sends queue the rest.
  const std::vector<size_t> sizes{0, 1, 4096, 65536, 300 * 1024 + 3, 3 * 1024 * 1024 + 5};
  constexpr int kRounds = 3;
  for (int round = 0; round < kRounds; ++round) {
    // Round 0 goes out at once (over ZeroMQ or a lane, whichever is up), the
    // others over the lanes: per-tag order holds across the switch.
    if (round == 1) {
      for (auto& rank : ranks) ASSERT_TRUE(rank->wait_for_lanes(1, Deadline::after(kDeadline)));
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      for (const uint64_t tag : {uint64_t{1}, uint64_t{2}}) {
        ranks[1]->send(0, tag, pattern(sizes[i], round * 10 + static_cast<int>(tag)), "test",
                       Deadline::after(kDeadline));
      }
    }
  }
  // Two threads take the lane's reader role in turns, each for its tag.
  std::vector<std::jthread> readers;
  for (const uint64_t tag : {uint64_t{2}, uint64_t{1}}) {
    readers.emplace_back([&, tag] {
      for (int round = 0; round < kRounds; ++round) {
        for (const size_t size : sizes) {
          EXPECT_EQ(ranks[0]->recv(1, tag, "test", Deadline::after(kDeadline)),
                    pattern(size, round * 10 + static_cast<int>(tag)))
              << "tag " << tag << " size " << size;
        }
      }
    });
  }
}

TEST(TcpLane, BothRanksSendEightMegabytesBeforeReceiving) {
  const JobAuth auth("lane-both-ways", "");
  auto ranks = make_pair_over_tcp(auth);
  for (auto& rank : ranks) ASSERT_TRUE(rank->wait_for_lanes(1, Deadline::after(kDeadline)));
  const size_t bytes = size_t{8} << 20;  // more than loopback's socket buffers
  for (int r = 0; r < 2; ++r) {
    ranks[r]->send(1 - r, 5, pattern(bytes, r), "test", Deadline::after(kDeadline));
  }
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(ranks[r]->recv(1 - r, 5, "test", Deadline::after(kDeadline)), pattern(bytes, 1 - r));
  }
}

TEST(TcpLane, APayloadSentInTwoPartsArrivesJoined) {
  const JobAuth auth("lane-parts", "lane secret");
  auto ranks = make_pair_over_tcp(auth);
  for (auto& rank : ranks) ASSERT_TRUE(rank->wait_for_lanes(1, Deadline::after(kDeadline)));
  // Sizes around the socket buffers (the largest queue the rest of head ‖
  // body), split inside a 16-byte block, at the collectives' 32-byte header
  // and nowhere.
  const std::vector<size_t> sizes{1, 4096, 300 * 1024 + 3, 3 * 1024 * 1024 + 5};
  const std::vector<size_t> splits{0, 1, 32};
  uint64_t tag = 1;
  for (const size_t size : sizes) {
    for (const size_t split : splits) {
      const auto payload = pattern(size, static_cast<int>(tag));
      const std::span<const std::byte> all(payload);
      const size_t at = std::min(split, size);
      ranks[1]->send_parts(0, tag++, all.first(at), all.subspan(at), "test",
                           Deadline::after(kDeadline));
    }
  }
  tag = 1;
  for (const size_t size : sizes) {
    for (const size_t split : splits) {
      EXPECT_EQ(ranks[0]->recv(1, tag, "test", Deadline::after(kDeadline)),
                pattern(size, static_cast<int>(tag)))
          << "size " << size << " split " << split;
      ++tag;
    }
  }
}

// recv_into() and recv_parts() read the awaited frame straight into the
// caller's buffers; frames on other tags, and one of another size, reach
// the queue as before: every message arrives whole and in per-tag order,
// with the MAC (a secret) and with the CRC (none), and a buffer of the wrong
// size fails naming both sizes.
class TcpLaneInto : public ::testing::TestWithParam<const char*> {};

TEST_P(TcpLaneInto, TheAwaitedFrameGoesStraightInAndTheOthersQueue) {
  const JobAuth auth("lane-into", GetParam());
  auto ranks = make_pair_over_tcp(auth);
  for (auto& rank : ranks) ASSERT_TRUE(rank->wait_for_lanes(1, Deadline::after(kDeadline)));
  // Tag 1 twice, then tag 2; rank 0 asks for tag 2 first, so both tag-1
  // frames pass through the queue while it waits; then for tag 3, which
  // comes straight into its buffer (the next frame on the lane).
  const std::vector<std::pair<uint64_t, size_t>> sent{
      {1, 4000}, {1, 300 * 1024 + 3}, {2, 3 * 1024 * 1024 + 5}, {3, 65536 + 7}, {3, 33}};
  for (size_t i = 0; i < sent.size(); ++i) {
    ranks[1]->send(0, sent[i].first, pattern(sent[i].second, static_cast<int>(i)), "test",
                   Deadline::after(kDeadline));
  }
  std::vector<std::byte> out(sent[2].second);
  ranks[0]->recv_into(1, 2, out, "test", Deadline::after(kDeadline));
  EXPECT_EQ(out, pattern(sent[2].second, 2));
  out.assign(sent[3].second, std::byte{0});
  ranks[0]->recv_into(1, 3, out, "test", Deadline::after(kDeadline));
  EXPECT_EQ(out, pattern(sent[3].second, 3));
  // The queued ones, through recv_parts (a head inside a 16-byte block).
  for (size_t i = 0; i < 2; ++i) {
    out.assign(sent[i].second, std::byte{0});
    const std::span<std::byte> all(out);
    ranks[0]->recv_parts(1, 1, all.first(5), all.subspan(5), "test", Deadline::after(kDeadline),
                         [](std::span<const std::byte>) { FAIL() << "sizes differ"; });
    EXPECT_EQ(out, pattern(sent[i].second, static_cast<int>(i))) << "frame " << i;
  }
  // A 33-byte frame into a 32-byte buffer: queued, then refused by size.
  out.assign(32, std::byte{0});
  try {
    ranks[0]->recv_into(1, 3, out, "test", Deadline::after(kDeadline));
    ADD_FAILURE() << "a 33-byte message went into a 32-byte buffer";
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_NE(std::string(e.what()).find("is 33 bytes, the receive buffer is 32 bytes"),
              std::string::npos)
        << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(MacAndCrc, TcpLaneInto, ::testing::Values("lane secret", ""),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(*info.param != '\0' ? "Mac" : "Crc");
                         });

// A rank 0 made by hand: registers at the rendezvous, offers a lane over
// ZeroMQ, connects to rank 1's lane, says hello and sends the switch marker
// over ZeroMQ; then writes what the test gives it on the lane.
class FakeLanePeer {
 public:
  explicit FakeLanePeer(const JobAuth& auth)
      : auth_(auth),
        context_(1),
        pull_(context_, zmq::socket_type::pull),
        push_(context_, zmq::socket_type::push) {
    pull_.set(zmq::sockopt::linger, 0);
    push_.set(zmq::sockopt::linger, 0);
    pull_.bind("tcp://127.0.0.1:*");
  }
  ~FakeLanePeer() {
    if (fd_ >= 0) close(fd_);
  }

  // What the first lane connection says before the honest one (none: the
  // honest one is the first).
  enum class Stale { kNone, kOtherChallenge, kNoChallenge };

  // Runs rank 0's side of connect() against `rank1`, which connects at once.
  void connect(RendezvousServer& server, ZmqTransport& rank1, Stale stale = Stale::kNone) {
    auto connected = std::async(std::launch::async, [&] {
      rank1.connect(rendezvous(server.address(), rank1.local_endpoint(), 2, auth_,
                               Deadline::after(kDeadline), Logger::null()));
    });
    PeerEndpoint self;
    self.rank = 0;
    self.host = "fake-host";
    self.tcp_endpoint = pull_.get(zmq::sockopt::last_endpoint);
    const auto table =
        rendezvous(server.address(), self, 2, auth_, Deadline::after(kDeadline), Logger::null());
    push_.connect(table[1].tcp_endpoint);
    const std::array<std::byte, 4> offer{std::byte{1}, std::byte{0}, std::byte{0}, std::byte{0}};
    const auto offer_header = wire::encode_header(frame(0, kLaneOfferTag), offer, auth_, false);
    push_.send(zmq::const_buffer(offer_header.data(), offer_header.size()),
               zmq::send_flags::sndmore);
    push_.send(zmq::const_buffer(offer.data(), offer.size()), zmq::send_flags::none);
    // Rank 1's offer (after any heartbeats): header, then its lane port.
    const wire::FrameLimits limits{auth_.job_id(), 2, 0, 1 << 20};
    uint32_t port = 0;
    while (port == 0) {
      zmq::message_t header_part;
      zmq::message_t body_part;
      ASSERT_TRUE(pull_.recv(header_part));
      ASSERT_TRUE(header_part.more());
      ASSERT_TRUE(pull_.recv(body_part));
      const wire::FrameHeader h = wire::decode_header(
          std::span(static_cast<const std::byte*>(header_part.data()), header_part.size()), limits,
          auth_);
      if (h.type != wire::MessageType::kData || h.tag != kLaneOfferTag) continue;
      ASSERT_EQ(body_part.size(), 4u);
      std::memcpy(&port, body_part.data(), sizeof port);
      ASSERT_GT(port, 0u);
    }
    if (stale != Stale::kNone) {
      open_lane(port);
      std::array<std::byte, kLaneChallengeBytes> challenge = read_challenge();
      if (stale == Stale::kNoChallenge) {
        write_all(wire::encode_header(frame(0, kLaneOfferTag), {}, auth_, false));
      } else {
        challenge[3] ^= std::byte{1};  // as if recorded from another connection
        write_all(wire::encode_header(frame(0, kLaneOfferTag), challenge, auth_, false));
        write_all(challenge);
      }
      // Rank 1 refuses it: the connection ends (EOF), no byte comes.
      pollfd item{fd_, POLLIN, 0};
      ASSERT_EQ(poll(&item, 1, static_cast<int>(kDeadline / 1ms)), 1) << "rank 1 kept it open";
      std::byte byte{};
      ASSERT_EQ(recv(fd_, &byte, 1, 0), 0) << "rank 1 kept the stale hello's connection";
      close_lane();
    }
    open_lane(port);
    const auto challenge = read_challenge();
    write_all(wire::encode_header(frame(0, kLaneOfferTag), challenge, auth_, false));
    write_all(challenge);
    // The switch marker: from here on rank 1 reads this rank's data from the lane.
    const auto marker = wire::encode_header(frame(1, kLaneOfferTag), {}, auth_, false);
    push_.send(zmq::const_buffer(marker.data(), marker.size()), zmq::send_flags::sndmore);
    push_.send(zmq::const_buffer(), zmq::send_flags::none);
    connected.get();
  }

  wire::FrameHeader frame(uint64_t sequence, uint64_t tag) const {
    wire::FrameHeader h;
    h.type = wire::MessageType::kData;
    h.sender = 0;
    h.receiver = 1;
    h.job_id = auth_.job_id();
    h.sequence = sequence;
    h.tag = tag;
    return h;
  }
  void open_lane(uint32_t port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  }
  // The acceptor's challenge, the first bytes on a lane connection.
  std::array<std::byte, kLaneChallengeBytes> read_challenge() {
    std::array<std::byte, kLaneChallengeBytes> challenge{};
    EXPECT_EQ(recv(fd_, challenge.data(), challenge.size(), MSG_WAITALL),
              static_cast<ssize_t>(challenge.size()));
    return challenge;
  }
  template <class Bytes>
  void write_all(const Bytes& bytes) {
    ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  void close_lane() {
    close(fd_);
    fd_ = -1;
  }

 private:
  JobAuth auth_;
  zmq::context_t context_;
  zmq::socket_t pull_;
  zmq::socket_t push_;
  int fd_ = -1;
};

// How rank 1 receives: recv(); recv_parts() (a 32-byte head and the rest,
// as the collectives do: the lane reads the payload straight into them); or
// recv_fold() (a 32-byte head, then the rest in pieces as it is read, MACed
// piece by piece and checked at the end, as the collectives' reduce does).
enum class Receive { kWhole, kIntoParts, kFolded };

struct Crafted {
  const char* name;
  const char* expected;  // in rank 1's error; empty: the frame is delivered
  Receive via = Receive::kWhole;
};

// rank.recv(0, tag) through recv_parts() with a head of `head_bytes`.
std::vector<std::byte> recv_through_parts(ZmqTransport& rank, uint64_t tag, size_t size,
                                          size_t head_bytes) {
  std::vector<std::byte> out(size);
  const std::span<std::byte> all(out);
  rank.recv_parts(0, tag, all.first(head_bytes), all.subspan(head_bytes), "test",
                  Deadline::after(kDeadline), [&](std::span<const std::byte> m) {
                    throw CommError(0, "test",
                                    fmt::format("a {}-byte message, not {}", m.size(), size));
                  });
  return out;
}

// rank.recv(0, tag) through recv_fold() with a head of `head_bytes`: the
// pieces land in order at their offsets and cover the body exactly once.
// *pieces counts the pieces handed over (a lane hands them over before the
// frame's MAC is checked whole).
std::vector<std::byte> recv_folded(ZmqTransport& rank, uint64_t tag, size_t size, size_t head_bytes,
                                   size_t* pieces) {
  std::vector<std::byte> out(size);
  const std::span<std::byte> all(out);
  size_t next = 0;
  rank.recv_fold(
      0, tag, all.first(head_bytes), size - head_bytes, "test", Deadline::after(kDeadline),
      [&](size_t offset, std::span<const std::byte> piece) {
        EXPECT_EQ(offset, next);
        std::copy(piece.begin(), piece.end(),
                  out.begin() + static_cast<ptrdiff_t>(head_bytes + offset));
        next = offset + piece.size();
        ++*pieces;
      },
      [&](std::span<const std::byte> m) {
        throw CommError(0, "test", fmt::format("a {}-byte message, not {}", m.size(), size));
      });
  return out;
}

class TcpLaneFrames : public ::testing::TestWithParam<Crafted> {};

TEST_P(TcpLaneFrames, ACraftedFrameIsDeliveredOrFailsNamingTheSender) {
  const std::string name = GetParam().name;
  const JobAuth auth("lane-frames", "lane secret");
  RendezvousServer server("127.0.0.1", 0, 2, auth, Logger::null());
  ZmqTransport rank1(lane_options(1, 2), auth, Logger::null());
  FakeLanePeer rank0(auth);
  rank0.connect(server, rank1);
  if (HasFatalFailure()) return;
  ASSERT_TRUE(rank1.wait_for_lanes(1, Deadline::after(kDeadline)));

  const std::vector<std::byte> payload = pattern(4000, 3);  // over 1 KiB: GcmTagger's MAC
  const uint64_t tag = 7;
  if (name == "valid") {
    rank0.write_all(wire::encode_header(rank0.frame(1, tag), payload, auth, false));
    rank0.write_all(payload);
  } else if (name == "truncated") {
    rank0.write_all(wire::encode_header(rank0.frame(1, tag), payload, auth, false));
    rank0.write_all(std::span(payload).first(10));
    rank0.close_lane();  // the peer dies mid-frame
  } else if (name == "oversized") {
    const std::vector<std::byte> huge(size_t{17} << 20);  // over max_message_bytes (16 MiB)
    rank0.write_all(wire::encode_header(rank0.frame(1, tag), huge, auth, false));
  } else if (name == "forged") {
    const JobAuth forger("lane-frames", "a guessed secret");
    rank0.write_all(wire::encode_header(rank0.frame(1, tag), payload, forger, false));
    rank0.write_all(payload);
  } else if (name == "flipped") {  // the last byte changed after the MAC
    std::vector<std::byte> changed = payload;
    rank0.write_all(wire::encode_header(rank0.frame(1, tag), payload, auth, false));
    changed.back() ^= std::byte{1};
    rank0.write_all(changed);
  } else if (name == "skipped") {
    rank0.write_all(wire::encode_header(rank0.frame(5, tag), payload, auth, false));
    rank0.write_all(payload);
  }
  const std::string expected = GetParam().expected;
  size_t pieces = 0;
  const auto receive = [&] {
    switch (GetParam().via) {
      case Receive::kIntoParts:
        return recv_through_parts(rank1, tag, payload.size(), 32);
      case Receive::kFolded:
        return recv_folded(rank1, tag, payload.size(), 32, &pieces);
      case Receive::kWhole:
        break;
    }
    return rank1.recv(0, tag, "test", Deadline::after(kDeadline));
  };
  if (expected.empty()) {
    EXPECT_EQ(receive(), payload);
    return;
  }
  try {
    receive();
    ADD_FAILURE() << name << ": the frame was delivered";
  } catch (const TimeoutError& e) {
    ADD_FAILURE() << name << ": waited out instead of detected: " << e.what();
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.peer(), 0) << what;
    EXPECT_NE(what.find("rank 0"), std::string::npos) << what;
    EXPECT_NE(what.find(expected), std::string::npos) << what;
    if (GetParam().via == Receive::kFolded && (name == "forged" || name == "flipped")) {
      // The fused path: the body was used as read, and the call still failed.
      EXPECT_GT(pieces, 0u);
    }
  }
  // The transport stays failed.
  EXPECT_THROW(rank1.recv(0, tag + 1, "test", Deadline::after(kDeadline)), CommError);
}

class TcpLaneStaleHello : public ::testing::TestWithParam<FakeLanePeer::Stale> {};

TEST_P(TcpLaneStaleHello, IsRefusedAndTheHonestConnectionBecomesTheLane) {
  const JobAuth auth("lane-hello", "lane secret");
  RendezvousServer server("127.0.0.1", 0, 2, auth, Logger::null());
  ZmqTransport rank1(lane_options(1, 2), auth, Logger::null());
  FakeLanePeer rank0(auth);
  rank0.connect(server, rank1, GetParam());
  if (HasFatalFailure()) return;
  ASSERT_TRUE(rank1.wait_for_lanes(1, Deadline::after(kDeadline)));
  const std::vector<std::byte> payload = pattern(1000, 4);
  rank0.write_all(wire::encode_header(rank0.frame(1, 9), payload, auth, false));
  rank0.write_all(payload);
  EXPECT_EQ(rank1.recv(0, 9, "test", Deadline::after(kDeadline)), payload);
}

INSTANTIATE_TEST_SUITE_P(Hellos, TcpLaneStaleHello,
                         ::testing::Values(FakeLanePeer::Stale::kOtherChallenge,
                                           FakeLanePeer::Stale::kNoChallenge),
                         [](const ::testing::TestParamInfo<FakeLanePeer::Stale>& info) {
                           return std::string(info.param == FakeLanePeer::Stale::kNoChallenge
                                                  ? "NoChallenge"
                                                  : "OtherChallenge");
                         });

// Every crafted frame, received `via`.
std::vector<Crafted> crafted_frames(Receive via) {
  return {Crafted{"valid", "", via},
          Crafted{"flipped", "failed its checks on its tcp lane", via},
          Crafted{"truncated", "closed its tcp lane mid-frame (10 of 4000 payload", via},
          Crafted{"oversized", "sent an invalid frame on its tcp lane", via},
          Crafted{"forged", "failed its checks on its tcp lane", via},
          Crafted{"skipped", "sequence 5 (expected data from rank 0, sequence 1)", via}};
}

std::string crafted_name(const ::testing::TestParamInfo<Crafted>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Frames, TcpLaneFrames,
                         ::testing::ValuesIn(crafted_frames(Receive::kWhole)), crafted_name);
INSTANTIATE_TEST_SUITE_P(FramesIntoCallerBuffers, TcpLaneFrames,
                         ::testing::ValuesIn(crafted_frames(Receive::kIntoParts)), crafted_name);
INSTANTIATE_TEST_SUITE_P(FramesFoldedAsRead, TcpLaneFrames,
                         ::testing::ValuesIn(crafted_frames(Receive::kFolded)), crafted_name);

int socket_option(int fd, int name) {
  int value = 0;
  socklen_t length = sizeof value;
  getsockopt(fd, SOL_SOCKET, name, &value, &length);
  return value;
}

TEST(TcpLaneSocket, BuffersAreTheRequestedSizeOrTheKernelsOwn) {
  constexpr int kRequested = 512 << 10;
  std::array<int, 2> fds{};
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds.data()), 0);
  const int default_send = socket_option(fds[1], SO_SNDBUF);
  const int default_receive = socket_option(fds[1], SO_RCVBUF);
  ASSERT_LT(default_send, kRequested);  // else the test would show nothing
  const TcpLane sized(fds[0], 1, kRequested);
  const TcpLane untouched(fds[1], 0, 0);
  EXPECT_GE(socket_option(sized.fd(), SO_SNDBUF), kRequested);
  EXPECT_GE(socket_option(sized.fd(), SO_RCVBUF), kRequested);
  EXPECT_EQ(socket_option(untouched.fd(), SO_SNDBUF), default_send);
  EXPECT_EQ(socket_option(untouched.fd(), SO_RCVBUF), default_receive);
}

}  // namespace
}  // namespace dtrain::comm
