// security.encrypt (comm/wire/curve.h, docs/security.md): the key
// derivation; FramedSocket, ZmqTransport and the rendezvous over CURVE; a
// peer with another key is refused and logged, one without the secret or
// without CURVE gets nothing through; and the bytes on loopback (captured by
// a TCP relay between the two sockets) hold no float of the model's vector
// with encryption on, and every one of them with it off (the control).
#include "comm/wire/curve.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/collectives/communicator.h"
#include "comm/rendezvous/launch_env.h"
#include "comm/rendezvous/rendezvous.h"
#include "comm/transport/zmq_transport.h"
#include "comm/wire/framed_socket.h"
#include "core/error.h"
#include "testing/junk_frames.h"

namespace dtrain::comm::wire {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kSecret = "curve test secret";

FramedSocketOptions router_options(const JobAuth& auth) {
  FramedSocketOptions o;
  o.name = "curve router";
  o.rank = 0;
  o.limits = FrameLimits{auth.job_id(), 3, 0, 1 << 20};
  o.accepted = {MessageType::kData};
  return o;
}

FramedSocketOptions dealer_options(const JobAuth& auth) {
  FramedSocketOptions o;
  o.name = "curve dealer";
  o.rank = 1;
  o.limits = FrameLimits{auth.job_id(), 3, 1, 1 << 20};
  o.accepted = {MessageType::kData};
  return o;
}

FrameHeader data_header(uint32_t receiver, uint64_t sequence) {
  FrameHeader h;
  h.type = MessageType::kData;
  h.receiver = receiver;
  h.sequence = sequence;
  return h;
}

// 256 distinctive floats: what a gradient of the model might hold.
std::vector<float> model_vector() {
  std::vector<float> v(256);
  for (size_t i = 0; i < v.size(); ++i) v[i] = 1000.25f + 0.123f * static_cast<float>(i);
  return v;
}

std::span<const std::byte> bytes_of(const std::vector<float>& v) {
  return std::as_bytes(std::span(v));
}

// How many entries of `v` appear, as their 4 bytes, anywhere in `haystack`.
size_t floats_found(const std::vector<float>& v, const std::vector<std::byte>& haystack) {
  size_t found = 0;
  for (float f : v) {
    std::array<std::byte, 4> needle;
    std::memcpy(needle.data(), &f, 4);
    if (std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
        haystack.end()) {
      ++found;
    }
  }
  return found;
}

// A TCP relay on 127.0.0.1 between one client and `target_port`: it copies
// every byte both ways and records them (both directions, one buffer).
class Relay {
 public:
  explicit Relay(int target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listen_fd_, 4), 0);
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::jthread([this](std::stop_token stop) { run(stop); });
  }
  ~Relay() {
    thread_.request_stop();
    thread_.join();
    for (int fd : {listen_fd_, client_fd_, server_fd_})
      if (fd >= 0) ::close(fd);
  }
  int port() const { return port_; }
  std::vector<std::byte> captured() {
    std::lock_guard lock(mutex_);
    return captured_;
  }

 private:
  void run(std::stop_token stop) {
    while (!stop.stop_requested() && client_fd_ < 0) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) client_fd_ = ::accept(listen_fd_, nullptr, nullptr);
    }
    if (client_fd_ < 0) return;
    server_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(target_port_));
    if (::connect(server_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
    std::array<std::byte, 65536> buffer;
    while (!stop.stop_requested()) {
      std::array<pollfd, 2> p{pollfd{client_fd_, POLLIN, 0}, pollfd{server_fd_, POLLIN, 0}};
      if (::poll(p.data(), 2, 50) <= 0) continue;
      for (size_t i = 0; i < 2; ++i) {
        if ((p[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const int from = i == 0 ? client_fd_ : server_fd_;
        const int to = i == 0 ? server_fd_ : client_fd_;
        const ssize_t n = ::read(from, buffer.data(), buffer.size());
        if (n <= 0) return;
        {
          std::lock_guard lock(mutex_);
          captured_.insert(captured_.end(), buffer.begin(), buffer.begin() + n);
        }
        for (ssize_t sent = 0; sent < n;) {
          const ssize_t w = ::write(to, buffer.data() + sent, static_cast<size_t>(n - sent));
          if (w <= 0) return;
          sent += w;
        }
      }
    }
  }

  int target_port_;
  int listen_fd_ = -1;
  int client_fd_ = -1;
  int server_fd_ = -1;
  int port_ = 0;
  std::mutex mutex_;
  std::vector<std::byte> captured_;
  std::jthread thread_;
};

int port_of(const std::string& endpoint) {
  return std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
}

TEST(CurveKeys, DerivedFromTheSecretAndTheJob) {
  const JobAuth a("job a", kSecret, true);
  const JobAuth again("job a", kSecret, true);
  const JobAuth other_job("job b", kSecret, true);
  const JobAuth other_secret("job a", "another secret", true);
  ASSERT_NE(a.curve(), nullptr);
  EXPECT_EQ(a.curve()->server.public_key, again.curve()->server.public_key);
  EXPECT_EQ(a.curve()->client.secret_key, again.curve()->client.secret_key);
  EXPECT_NE(a.curve()->server.public_key, a.curve()->client.public_key);
  EXPECT_NE(a.curve()->server.public_key, other_job.curve()->server.public_key);
  EXPECT_NE(a.curve()->client.public_key, other_secret.curve()->client.public_key);
  // The secret key belongs to the public one (X25519 base-point multiply).
  std::array<char, 41> pub{};
  const std::string z85_secret = z85_key(a.curve()->client.secret_key);
  ASSERT_EQ(zmq_curve_public(pub.data(), z85_secret.c_str()), 0);
  EXPECT_EQ(std::string(pub.data(), 40), z85_key(a.curve()->client.public_key));
  // Without encrypt there are no keys; the MAC keys are the same either way.
  const JobAuth plain("job a", kSecret);
  EXPECT_EQ(plain.curve(), nullptr);
  const std::vector<std::byte> header(8, std::byte{1});
  EXPECT_TRUE(a.verify(header, {}, plain.mac(header, {})));
  EXPECT_TRUE(plain.verify(header, {}, a.mac(header, {})));
}

TEST(CurveKeys, EncryptWithoutASecretIsAConfigError) {
  try {
    JobAuth("job", "", true);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("needs a job secret"), std::string::npos) << e.what();
  }
}

TEST(CurveKeys, TheLaunchEnvironmentCarriesEncryptAndTcpOnly) {
  EXPECT_FALSE(resolve_launch_settings({}).encrypt);
  EXPECT_FALSE(resolve_launch_settings({}).tcp_only);
  const LaunchSettings s =
      resolve_launch_settings({{"DTRAIN_ENCRYPT", "1"}, {"DTRAIN_TCP_ONLY", "1"}});
  EXPECT_TRUE(s.encrypt);
  EXPECT_TRUE(s.tcp_only);
  EXPECT_THROW(resolve_launch_settings({{"DTRAIN_ENCRYPT", "yes"}}), ConfigError);
}

TEST(Curve, AFramedSocketPairTalksOverCurve) {
  const JobAuth auth("curve pair", kSecret, true);
  zmq::context_t context(1);
  FramedSocket router(context, FramedSocket::Role::kRouter, "tcp://127.0.0.1:*",
                      router_options(auth), auth, Logger::null());
  FramedSocket dealer(context, FramedSocket::Role::kDealer, router.endpoint(), dealer_options(auth),
                      auth, Logger::null());
  const std::vector<float> v = model_vector();
  ASSERT_TRUE(dealer.send("", data_header(0, 1), bytes_of(v)));
  const auto frame = router.receive(Deadline::after(20s));
  ASSERT_TRUE(frame.has_value());
  ASSERT_EQ(frame->payload().size(), v.size() * 4);
  EXPECT_EQ(std::memcmp(frame->payload().data(), v.data(), v.size() * 4), 0);
  ASSERT_TRUE(router.send(frame->identity, data_header(1, 1), bytes_of(v)));
  ASSERT_TRUE(dealer.receive(Deadline::after(20s)).has_value());
  EXPECT_EQ(router.refused_connections(), 0u);
}

TEST(Curve, AClientWithAnotherKeyIsRefusedAndLogged) {
  const JobAuth auth("curve refused", kSecret, true);
  zmq::context_t context(1);
  dtrain::testing::LineLog log;
  FramedSocket router(context, FramedSocket::Role::kRouter, "tcp://127.0.0.1:*",
                      router_options(auth), auth, log.logger());
  // It knows the server's public key (public keys are not secrets) but has
  // a key pair of its own.
  zmq::context_t intruder_context(1);
  zmq::socket_t intruder(intruder_context, zmq::socket_type::dealer);
  intruder.set(zmq::sockopt::linger, 0);
  std::array<char, 41> pub{}, sec{};
  ASSERT_EQ(zmq_curve_keypair(pub.data(), sec.data()), 0);
  intruder.set(zmq::sockopt::curve_serverkey, z85_key(auth.curve()->server.public_key));
  intruder.set(zmq::sockopt::curve_publickey, std::string(pub.data(), 40));
  intruder.set(zmq::sockopt::curve_secretkey, std::string(sec.data(), 40));
  intruder.connect(router.endpoint());
  const std::vector<float> v = model_vector();
  intruder.send(zmq::buffer(std::string(kHeaderBytes, 'x')), zmq::send_flags::sndmore);
  intruder.send(zmq::buffer(v.data(), v.size() * 4), zmq::send_flags::dontwait);
  ASSERT_TRUE(log.wait_for_line("refused a CURVE connection", Deadline::after(20s))) << log.all();
  EXPECT_GE(router.refused_connections(), 1u);
  EXPECT_GE(log.count("curve router: refused a CURVE connection (1 so far): from 127.0.0.1: "
                      "unknown public key"),
            1u)
      << log.all();
  // Nothing it sent reached the socket's owner: no frame, no drop.
  EXPECT_FALSE(router.try_receive().has_value());
  EXPECT_EQ(router.dropped(), 0u);
}

TEST(Curve, APeerWithoutTheSecretOrWithoutCurveGetsNothingThrough) {
  const JobAuth auth("curve outsiders", kSecret, true);
  zmq::context_t context(1);
  FramedSocket router(context, FramedSocket::Role::kRouter, "tcp://127.0.0.1:*",
                      router_options(auth), auth, Logger::null());
  // Another secret: other keys, so it does not know the server's key and
  // its handshake fails. No CURVE: the mechanisms do not match.
  const JobAuth wrong("curve outsiders", "not the secret", true);
  const JobAuth plain("curve outsiders", kSecret);
  zmq::context_t outsider_context(1);
  FramedSocket wrong_dealer(outsider_context, FramedSocket::Role::kDealer, router.endpoint(),
                            dealer_options(wrong), wrong, Logger::null());
  FramedSocket plain_dealer(outsider_context, FramedSocket::Role::kDealer, router.endpoint(),
                            dealer_options(plain), plain, Logger::null());
  const std::vector<float> v = model_vector();
  wrong_dealer.send("", data_header(0, 1), bytes_of(v));
  plain_dealer.send("", data_header(0, 2), bytes_of(v));
  // A member of the job gets through on the same socket meanwhile; its
  // frame is the only one that arrives.
  FramedSocket member(context, FramedSocket::Role::kDealer, router.endpoint(), dealer_options(auth),
                      auth, Logger::null());
  member.send("", data_header(0, 3), bytes_of(v));
  const auto frame = router.receive(Deadline::after(20s));
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(frame->header.sequence, 3u);
  EXPECT_FALSE(router.receive(Deadline::after(500ms)).has_value());
  EXPECT_EQ(router.dropped(), 0u);
}

// Handshakes that fail inside libzmq, before ZAP: a client with another
// server key (another secret or key file) and a client without CURVE. The
// binding socket's monitor counts and logs each (ZapHandler::watch_handshakes).
TEST(Curve, HandshakesThatFailBeforeZapAreCountedAndLogged) {
  const JobAuth auth("curve handshakes", kSecret, true);
  const struct {
    const char* name;
    JobAuth client;
    const char* reason;
  } cases[] = {
      {"another server key", JobAuth("curve handshakes", "another key file's secret", true),
       "handshake failed: its CURVE HELLO does not open with this socket's key"},
      // Which side notices the mismatch first is a race: the server (the
      // peer does not speak CURVE) or the client, which hangs up (the
      // connection ended during the handshake).
      {"no CURVE", JobAuth("curve handshakes", kSecret), "handshake failed: "},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    zmq::context_t context(1);
    dtrain::testing::LineLog log;
    FramedSocket router(context, FramedSocket::Role::kRouter, "tcp://127.0.0.1:*",
                        router_options(auth), auth, log.logger());
    zmq::context_t outsider_context(1);
    FramedSocket outsider(outsider_context, FramedSocket::Role::kDealer, router.endpoint(),
                          dealer_options(c.client), c.client, Logger::null());
    outsider.send("", data_header(0, 1), bytes_of(model_vector()));
    ASSERT_TRUE(log.wait_for_line(c.reason, Deadline::after(20s))) << log.all();
    EXPECT_GE(log.count("curve router: refused a CURVE connection (1 so far): on " +
                        router.endpoint() + ": " + c.reason),
              1u)
        << log.all();
    EXPECT_GE(router.refused_connections(), 1u);
    EXPECT_FALSE(router.try_receive().has_value());
  }
}

// The same on a ZmqTransport's inbound socket: a plaintext PUSH to a rank's
// CURVE inbox is counted in refused_connections() and logged.
TEST(Curve, ATransportCountsAPlaintextPeersHandshake) {
  const JobAuth auth("curve transport handshake", kSecret, true);
  dtrain::testing::LineLog log;
  ZmqTransportOptions o;
  o.ipc_dir = "";
  ZmqTransport transport(o, auth, log.logger());
  zmq::context_t outsider_context(1);
  zmq::socket_t push(outsider_context, zmq::socket_type::push);
  push.set(zmq::sockopt::linger, 0);
  push.connect(transport.local_endpoint().tcp_endpoint);
  push.send(zmq::buffer(std::string(kHeaderBytes, 'x')), zmq::send_flags::dontwait);
  ASSERT_TRUE(log.wait_for_line("rank 0: refused a CURVE connection", Deadline::after(20s)))
      << log.all();
  EXPECT_GE(log.count("rank 0: refused a CURVE connection (1 so far): on " +
                      transport.local_endpoint().tcp_endpoint + ": handshake failed: "),
            1u)
      << log.all();
  EXPECT_GE(transport.refused_connections(), 1u);
}

class CurveCapture : public ::testing::TestWithParam<bool> {};

TEST_P(CurveCapture, TheModelsFloatsAreOnTheWireOnlyInTheClear) {
  const bool encrypt = GetParam();
  const JobAuth auth("curve capture", kSecret, encrypt);
  zmq::context_t context(1);
  FramedSocket router(context, FramedSocket::Role::kRouter, "tcp://127.0.0.1:*",
                      router_options(auth), auth, Logger::null());
  Relay relay(port_of(router.endpoint()));
  FramedSocket dealer(context, FramedSocket::Role::kDealer,
                      fmt::format("tcp://127.0.0.1:{}", relay.port()), dealer_options(auth), auth,
                      Logger::null());
  const std::vector<float> v = model_vector();
  ASSERT_TRUE(dealer.send("", data_header(0, 1), bytes_of(v)));  // a push
  const auto frame = router.receive(Deadline::after(20s));
  ASSERT_TRUE(frame.has_value());
  ASSERT_TRUE(router.send(frame->identity, data_header(1, 1), bytes_of(v)));  // a pull's answer
  const auto reply = dealer.receive(Deadline::after(20s));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(std::memcmp(reply->payload().data(), v.data(), v.size() * 4), 0);
  // Both frames went through the relay before they arrived.
  const std::vector<std::byte> wire = relay.captured();
  ASSERT_GT(wire.size(), 2 * v.size() * 4);
  // A random 4-byte window matches one of 256 floats with probability
  // 256 / 2^32 each: over ~3 KB of ciphertext about 2e-4 in all.
  EXPECT_EQ(floats_found(v, wire), encrypt ? 0u : v.size());
}

INSTANTIATE_TEST_SUITE_P(OnAndOff, CurveCapture, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Encrypted" : "Clear"; });

class CurveTransport : public ::testing::TestWithParam<bool> {};

TEST_P(CurveTransport, AGroupAllreducesOverCurve) {
  const bool prefer_ipc = GetParam();
  const int world = 3;
  const JobAuth auth("curve group", kSecret, true);
  RendezvousServer server("127.0.0.1", 0, world, auth, Logger::null());
  std::vector<std::unique_ptr<ZmqTransport>> ranks;
  for (int r = 0; r < world; ++r) {
    ZmqTransportOptions o;
    o.rank = r;
    o.world_size = world;
    o.heartbeat_interval = 100ms;
    o.heartbeat_timeout = 60s;
    o.prefer_ipc = prefer_ipc;
    if (prefer_ipc) o.ipc_dir = ::testing::TempDir();
    ranks.push_back(std::make_unique<ZmqTransport>(o, auth, Logger::null()));
  }
  std::vector<std::vector<float>> results(world);
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        ZmqTransport& t = *ranks[static_cast<size_t>(r)];
        t.connect(rendezvous(server.address(), t.local_endpoint(), world, auth,
                             Deadline::after(20s), Logger::null()));
        CommunicatorOptions o;
        o.job_id = "curve-group";
        o.shm_allreduce = false;
        o.timeout = 20s;
        Communicator comm(t, o);
        std::vector<float> data(100'003, static_cast<float>(r + 1));
        comm.allreduce(data, ReduceOp::kSum);
        results[static_cast<size_t>(r)] = std::move(data);
      });
    }
  }
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(results[static_cast<size_t>(r)], std::vector<float>(100'003, 6.0f)) << r;
    EXPECT_EQ(ranks[static_cast<size_t>(r)]->refused_connections(), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(TcpAndIpc, CurveTransport, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Ipc" : "Tcp"; });

TEST(Curve, ARankWithAnotherSecretCannotJoinTheRendezvous) {
  const JobAuth auth("curve rendezvous", kSecret, true);
  const JobAuth wrong("curve rendezvous", "not the secret", true);
  RendezvousServer server("127.0.0.1", 0, 2, auth, Logger::null());
  PeerEndpoint outsider;
  outsider.rank = 1;
  outsider.host = "h";
  outsider.tcp_endpoint = "tcp://127.0.0.1:1";
  // Its timeout says why no reply came: the handshake failed (the monitor
  // of its connecting socket saw it).
  try {
    rendezvous(server.address(), outsider, 2, wrong, Deadline::after(1500ms), Logger::null());
    ADD_FAILURE() << "an outsider met the job";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("the CURVE handshake with it failed"), std::string::npos)
        << e.what();
  }
  // The job's own ranks still meet.
  std::vector<std::future<std::vector<PeerEndpoint>>> tables;
  for (int r = 0; r < 2; ++r) {
    tables.push_back(std::async(std::launch::async, [&, r] {
      PeerEndpoint self;
      self.rank = r;
      self.host = "h";
      self.tcp_endpoint = fmt::format("tcp://127.0.0.1:{}", 1000 + r);
      return rendezvous(server.address(), self, 2, auth, Deadline::after(20s), Logger::null());
    }));
  }
  for (auto& t : tables) EXPECT_EQ(t.get().size(), 2u);
}

}  // namespace
}  // namespace dtrain::comm::wire
