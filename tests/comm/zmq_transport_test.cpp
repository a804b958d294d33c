// ZmqTransport with every rank on a thread of this process: the sockets,
// rendezvous and I/O threads are the real ones (tcp and ipc on loopback).
// Process failures (SIGKILL, SIGSTOP) are in zmq_multiprocess_test.cpp.
#include "comm/transport/zmq_transport.h"

#include <gtest/gtest.h>

#include <array>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "comm/collectives/communicator.h"
#include "comm/wire/wire.h"
#include "core/error.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;

std::vector<std::byte> pattern(size_t n, int src, int dst, uint64_t tag, int index) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = static_cast<std::byte>(src * 31 + dst * 17 + tag * 7 + index * 3 + i);
  }
  return out;
}

ZmqTransportOptions test_options(int rank, int world) {
  ZmqTransportOptions o;
  o.rank = rank;
  o.world_size = world;
  o.heartbeat_interval = 100ms;
  // Failure detection is under test only where a test sets its own timeout;
  // elsewhere a silent peer must not fail the group: on a loaded machine (or
  // under ThreadSanitizer) an I/O thread can be off the CPU for seconds. The
  // calls' own deadlines (20 s) bound every wait.
  o.heartbeat_timeout = 60s;
  return o;
}

// A job of `world` transports on threads of this process.
struct Group {
  std::vector<std::unique_ptr<ZmqTransport>> ranks;
};

Group make_group(int world, const JobAuth& auth, bool prefer_ipc, Logger& logger = Logger::null(),
                 std::optional<LinkShaperOptions> link = std::nullopt) {
  RendezvousServer server("127.0.0.1", 0, world, auth, Logger::null());
  Group g;
  for (int r = 0; r < world; ++r) {
    auto o = test_options(r, world);
    o.prefer_ipc = prefer_ipc;
    o.link = link;
    g.ranks.push_back(std::make_unique<ZmqTransport>(o, auth, logger));
  }
  std::vector<std::future<void>> connected;
  for (int r = 0; r < world; ++r) {
    connected.push_back(std::async(std::launch::async, [&, r] {
      auto table = rendezvous(server.address(), g.ranks[r]->local_endpoint(), world, auth,
                              Deadline::after(20s), Logger::null());
      g.ranks[r]->connect(table);
    }));
  }
  for (auto& c : connected) c.get();
  return g;
}

// Counts log lines containing `needle` and lets a test wait for a number of them.
class LogWatch {
 public:
  explicit LogWatch(std::string needle)
      : needle_(std::move(needle)),
        logger_(LogLevel::kWarn, [this](LogLevel, std::string_view line) {
          std::lock_guard lock(mutex_);
          lines_.emplace_back(line);
          if (line.find(needle_) != std::string_view::npos) ++count_;
          cv_.notify_all();
        }) {}
  Logger& logger() { return logger_; }
  bool wait_for(int count, Deadline deadline) {
    std::unique_lock lock(mutex_);
    return cv_.wait_until(lock, deadline.at(), [&] { return count_ >= count; });
  }
  std::string all() {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& l : lines_) out += l + "\n";
    return out;
  }

 private:
  std::string needle_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_ = 0;
  std::vector<std::string> lines_;
  Logger logger_;
};

class ZmqTransportPair : public ::testing::TestWithParam<bool> {};

TEST_P(ZmqTransportPair, SizesAndPerTagOrder) {
  const JobAuth auth("zmq-sizes", GetParam() ? "" : "a secret");
  Group g = make_group(2, auth, /*prefer_ipc=*/GetParam());
  const std::vector<size_t> sizes{0, 1, 1000, 64 * 1024, 3 * 1024 * 1024 + 5};
  // Interleave two tags; each must arrive in its own order.
  for (int i = 0; i < static_cast<int>(sizes.size()); ++i) {
    for (uint64_t tag : {uint64_t{5}, uint64_t{1} << 40}) {
      g.ranks[0]->send(1, tag, pattern(sizes[i], 0, 1, tag, i), "test", Deadline::after(20s));
    }
  }
  for (uint64_t tag : {uint64_t{1} << 40, uint64_t{5}}) {
    for (int i = 0; i < static_cast<int>(sizes.size()); ++i) {
      if (i % 2 == 0) {
        EXPECT_EQ(g.ranks[1]->recv(0, tag, "test", Deadline::after(20s)),
                  pattern(sizes[i], 0, 1, tag, i));
      } else {
        std::vector<std::byte> out(sizes[i]);
        g.ranks[1]->recv_into(0, tag, out, "test", Deadline::after(20s));
        EXPECT_EQ(out, pattern(sizes[i], 0, 1, tag, i));
      }
    }
  }
  // And back.
  g.ranks[1]->send(0, 9, pattern(10, 1, 0, 9, 0), "test", Deadline::after(20s));
  EXPECT_EQ(g.ranks[0]->recv(1, 9, "test", Deadline::after(20s)), pattern(10, 1, 0, 9, 0));
  EXPECT_EQ(g.ranks[0]->dropped_frames(), 0u);
  EXPECT_EQ(g.ranks[1]->dropped_frames(), 0u);
}

INSTANTIATE_TEST_SUITE_P(IpcAndTcp, ZmqTransportPair, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "ipc" : "tcp_with_secret"; });

TEST(ZmqTransport, ConcurrentSendersKeepPerTagOrder) {
  const JobAuth auth("zmq-threads", "");
  Group g = make_group(3, auth, true);
  constexpr int kMessages = 50;
  std::vector<std::jthread> senders;
  for (int src : {1, 2}) {
    for (uint64_t tag : {uint64_t{1}, uint64_t{2}}) {
      senders.emplace_back([&, src, tag] {
        for (int i = 0; i < kMessages; ++i) {
          g.ranks[src]->send(0, tag, pattern(100 + i, src, 0, tag, i), "test",
                             Deadline::after(20s));
        }
      });
    }
  }
  senders.clear();  // joins
  for (int src : {1, 2}) {
    for (uint64_t tag : {uint64_t{2}, uint64_t{1}}) {
      for (int i = 0; i < kMessages; ++i) {
        ASSERT_EQ(g.ranks[0]->recv(src, tag, "test", Deadline::after(20s)),
                  pattern(100 + i, src, 0, tag, i));
      }
    }
  }
}

TEST(ZmqTransport, RecvTimeoutNamesPeerAndTagAndFailsTheTransport) {
  const JobAuth auth("zmq-timeout", "");
  Group g = make_group(2, auth, true);
  try {
    g.ranks[0]->recv(1, 42, "broadcast", Deadline::after(100ms));
    FAIL() << "recv returned without a message";
  } catch (const TimeoutError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_EQ(e.operation(), "broadcast");
    EXPECT_NE(std::string(e.what()).find("waiting for a message from rank 1 on tag 42"),
              std::string::npos)
        << e.what();
  }
  // Failed: every later call throws, naming the first failure.
  try {
    g.ranks[0]->send(1, 1, pattern(4, 0, 1, 1, 0), "allgather", Deadline::after(1s));
    FAIL() << "send on a failed transport succeeded";
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_EQ(e.operation(), "allgather");
  }
}

TEST(ZmqTransport, RecvIntoWrongSizeNamesBothSizes) {
  const JobAuth auth("zmq-size", "");
  Group g = make_group(2, auth, true);
  g.ranks[1]->send(0, 3, pattern(16, 1, 0, 3, 0), "test", Deadline::after(20s));
  std::vector<std::byte> out(15);
  try {
    g.ranks[0]->recv_into(1, 3, out, "reduce_scatter", Deadline::after(20s));
    FAIL() << "size mismatch accepted";
  } catch (const CommError& e) {
    EXPECT_NE(
        std::string(e.what()).find("message on tag 3 is 16 bytes, the receive buffer is 15 bytes"),
        std::string::npos)
        << e.what();
  }
  EXPECT_THROW(g.ranks[0]->recv(1, 4, "x", Deadline::after(1s)), CommError);
}

TEST(ZmqTransport, QueuedMessagesOutliveTheSendersGoodbye) {
  const JobAuth auth("zmq-goodbye", "");
  Group g = make_group(2, auth, true);
  g.ranks[1]->send(0, 7, pattern(3, 1, 0, 7, 0), "test", Deadline::after(20s));
  g.ranks[1]->send(0, 7, pattern(200000, 1, 0, 7, 1), "test", Deadline::after(20s));
  g.ranks[1].reset();  // says goodbye after its last message
  EXPECT_EQ(g.ranks[0]->recv(1, 7, "test", Deadline::after(20s)), pattern(3, 1, 0, 7, 0));
  EXPECT_EQ(g.ranks[0]->recv(1, 7, "test", Deadline::after(20s)), pattern(200000, 1, 0, 7, 1));
  try {
    g.ranks[0]->recv(1, 7, "gather", Deadline::after(20s));
    FAIL() << "a third message appeared";
  } catch (const TimeoutError& e) {
    FAIL() << "waited for the deadline although the peer had said goodbye: " << e.what();
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_NE(std::string(e.what()).find("closed its transport"), std::string::npos) << e.what();
  }
}

TEST(ZmqTransport, SilentPeerFailsByHeartbeat) {
  // Rank 1 registers an endpoint that accepts connections but never speaks.
  const JobAuth auth("zmq-silent", "");
  RendezvousServer server("127.0.0.1", 0, 2, auth, Logger::null());
  zmq::context_t context(1);
  zmq::socket_t mute(context, zmq::socket_type::pull);
  mute.set(zmq::sockopt::linger, 0);
  mute.bind("tcp://127.0.0.1:*");
  auto o = test_options(0, 2);
  o.heartbeat_timeout = 400ms;
  ZmqTransport rank0(o, auth, Logger::null());
  auto silent = std::async(std::launch::async, [&] {
    return rendezvous(server.address(),
                      PeerEndpoint{1, "elsewhere", mute.get(zmq::sockopt::last_endpoint), ""}, 2,
                      auth, Deadline::after(20s), Logger::null());
  });
  rank0.connect(rendezvous(server.address(), rank0.local_endpoint(), 2, auth, Deadline::after(20s),
                           Logger::null()));
  silent.get();
  try {
    rank0.recv(1, 0, "allreduce", Deadline::after(60s));
    FAIL() << "a message from a mute peer";
  } catch (const TimeoutError& e) {
    FAIL() << "hit the call's deadline instead of the heartbeat timeout: " << e.what();
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 1);
    EXPECT_STREQ(e.what(),
                 "allreduce with rank 1: peer stopped responding (no heartbeat for 400 ms)");
  }
}

// Issue #18 item 2: rank 0 waits on rank 2 (alive, heartbeating, sending
// nothing) while rank 1 is silent. The silence fails the whole transport:
// the wait on rank 2 ends within the heartbeat timeout naming rank 1 (not
// at the call's deadline, not naming rank 2), and the failure listener
// (the shared-memory allreduce's) hears of it.
TEST(ZmqTransport, ASilentPeerFailsWaitsOnOtherPeersNamingIt) {
  const JobAuth auth("zmq-silent-3", "");
  RendezvousServer server("127.0.0.1", 0, 3, auth, Logger::null());
  zmq::context_t context(1);
  zmq::socket_t mute(context, zmq::socket_type::pull);
  mute.set(zmq::sockopt::linger, 0);
  mute.bind("tcp://127.0.0.1:*");
  auto o0 = test_options(0, 3);
  auto o2 = test_options(2, 3);
  o0.heartbeat_timeout = o2.heartbeat_timeout = 400ms;
  ZmqTransport rank0(o0, auth, Logger::null());
  ZmqTransport rank2(o2, auth, Logger::null());
  std::mutex heard_mutex;
  std::vector<std::pair<int, std::string>> heard;
  rank0.set_failure_listener([&](int culprit, const std::string& reason) {
    std::lock_guard lock(heard_mutex);
    heard.emplace_back(culprit, reason);
  });
  auto silent = std::async(std::launch::async, [&] {
    return rendezvous(server.address(),
                      PeerEndpoint{1, "elsewhere", mute.get(zmq::sockopt::last_endpoint), ""}, 3,
                      auth, Deadline::after(20s), Logger::null());
  });
  auto other = std::async(std::launch::async, [&] {
    rank2.connect(rendezvous(server.address(), rank2.local_endpoint(), 3, auth,
                             Deadline::after(20s), Logger::null()));
  });
  rank0.connect(rendezvous(server.address(), rank0.local_endpoint(), 3, auth, Deadline::after(20s),
                           Logger::null()));
  silent.get();
  other.get();
  try {
    rank0.recv(2, 0, "allreduce", Deadline::after(60s));
    FAIL() << "a message from rank 2, which sends none";
  } catch (const TimeoutError& e) {
    FAIL() << "hit the call's deadline instead of the heartbeat timeout: " << e.what();
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 1) << e.what();
    EXPECT_NE(std::string(e.what()).find("peer stopped responding (no heartbeat for 400 ms)"),
              std::string::npos)
        << e.what();
  }
  // The listener runs on the I/O thread, which may tell it just after the
  // call above returned: wait for it (bounded), then remove it before
  // `heard_mutex` is taken (the listener runs under the transport's listener
  // lock and takes `heard_mutex` itself).
  const Deadline told = Deadline::after(20s);
  while (!told.expired()) {
    {
      std::lock_guard lock(heard_mutex);
      if (!heard.empty()) break;
    }
    std::this_thread::sleep_for(5ms);
  }
  rank0.set_failure_listener({});
  std::lock_guard lock(heard_mutex);
  ASSERT_EQ(heard.size(), 1u);
  EXPECT_EQ(heard[0].first, 1);
  EXPECT_EQ(heard[0].second, "peer stopped responding (no heartbeat for 400 ms)");
}

TEST(ZmqTransport, ForeignFramesAreDroppedAndLogged) {
  const JobAuth auth("zmq-foreign", "the secret");
  LogWatch watch("dropped an inbound frame");
  Group g = make_group(2, auth, /*prefer_ipc=*/false, watch.logger());
  // A first exchange, so that rank 1's sequence numbers are under way.
  g.ranks[1]->send(0, 2, pattern(5, 1, 0, 2, 0), "test", Deadline::after(20s));
  ASSERT_EQ(g.ranks[0]->recv(1, 2, "test", Deadline::after(20s)), pattern(5, 1, 0, 2, 0));

  // An intruder connects straight to rank 0's endpoint.
  zmq::context_t context(1);
  zmq::socket_t intruder(context, zmq::socket_type::push);
  intruder.set(zmq::sockopt::linger, 0);
  intruder.connect(g.ranks[0]->local_endpoint().tcp_endpoint);
  const std::vector<std::byte> evil = pattern(8, 6, 6, 6, 6);
  auto inject = [&](const wire::FrameHeader& h, const JobAuth& signer) {
    const auto header = wire::encode_header(h, evil, signer, true);
    intruder.send(zmq::const_buffer(header.data(), header.size()), zmq::send_flags::sndmore);
    intruder.send(zmq::const_buffer(evil.data(), evil.size()), zmq::send_flags::none);
  };
  wire::FrameHeader h;
  h.type = wire::MessageType::kData;
  h.sender = 1;
  h.receiver = 0;
  h.tag = 1;
  h.job_id = auth.job_id();
  h.sequence = 1000;
  inject(h, JobAuth("zmq-foreign", ""));         // no MAC
  inject(h, JobAuth("zmq-foreign", "guessed"));  // wrong secret
  h.job_id = job_id_of("another job");
  inject(h, JobAuth("another job", "the secret"));  // another job
  h.job_id = auth.job_id();
  h.sender = 9;
  inject(h, auth);  // not a rank of the job
  h.sender = 1;
  h.sequence = 0;
  inject(h, auth);  // a replay of rank 1's first frame
  intruder.send(zmq::str_buffer("garbage"), zmq::send_flags::none);
  constexpr int kInjected = 6;
  ASSERT_TRUE(watch.wait_for(kInjected, Deadline::after(20s))) << watch.all();
  EXPECT_EQ(g.ranks[0]->dropped_frames(), static_cast<uint64_t>(kInjected));
  const std::string log = watch.all();
  for (const char* reason :
       {"not authenticated", "MAC mismatch", "does not match this job's",
        "sender rank 9 is out of range", "replayed frame claiming rank 1", "one-part message"}) {
    EXPECT_NE(log.find(reason), std::string::npos) << reason << " not in:\n" << log;
  }
  // Only rank 1's own message on tag 1 is delivered.
  g.ranks[1]->send(0, 1, pattern(5, 1, 0, 1, 0), "test", Deadline::after(20s));
  EXPECT_EQ(g.ranks[0]->recv(1, 1, "test", Deadline::after(20s)), pattern(5, 1, 0, 1, 0));
  EXPECT_THROW(g.ranks[0]->recv(1, 1, "test", Deadline::after(100ms)), TimeoutError);
}

TEST(ZmqTransport, AbortFailsEveryPeerNamingTheCulprit) {
  Group g = make_group(3, JobAuth("abort", "secret"), /*prefer_ipc=*/true);
  // Rank 2 waits on rank 1, which is alive and sends nothing: only rank 0's
  // abort can end the wait before its deadline.
  auto waiting = std::async(std::launch::async, [&] {
    try {
      g.ranks[2]->recv(1, 7, "allreduce #4", Deadline::after(60s));
      return std::string("no error");
    } catch (const TimeoutError& e) {
      return std::string("timed out: ") + e.what();
    } catch (const CommError& e) {
      EXPECT_EQ(e.peer(), 1);
      return std::string(e.what());
    }
  });
  g.ranks[0]->abort(1, "rank 1 sent garbage");
  EXPECT_EQ(waiting.get(),
            "allreduce #4 with rank 1: rank 0 gave up on the group: rank 1 sent garbage");
  // The aborting transport and every receiver are failed for good.
  EXPECT_THROW(g.ranks[0]->send(2, 7, pattern(4, 0, 2, 7, 0), "send", Deadline::after(5s)),
               CommError);
  try {
    g.ranks[1]->recv(0, 7, "recv", Deadline::after(60s));
    ADD_FAILURE() << "rank 1 received a message";
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), 1) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 0 gave up on the group"), std::string::npos)
        << e.what();
  }
  // Aborting again sends nothing more and does not throw.
  g.ranks[0]->abort(2, "again");
  g.ranks[2]->abort(2, "received one already");
}

TEST(ZmqTransport, MisuseIsAUsageError) {
  const JobAuth auth("zmq-misuse", "");
  ZmqTransport lone(test_options(0, 2), auth, Logger::null());
  EXPECT_THROW(lone.send(1, 0, {}, "x", Deadline::after(1s)), UsageError);  // before connect
  EXPECT_THROW(lone.connect({}), UsageError);
  auto o = test_options(0, 2);
  o.heartbeat_timeout = o.heartbeat_interval;
  EXPECT_THROW(ZmqTransport(o, auth, Logger::null()), UsageError);
  Group g = make_group(2, auth, true);
  EXPECT_THROW(g.ranks[0]->send(0, 0, {}, "x", Deadline::after(1s)), UsageError);
  EXPECT_THROW(g.ranks[0]->recv(2, 0, "x", Deadline::after(1s)), UsageError);
}

TEST(ZmqTransport, LinkShaperHoldsAMegabyteAtEightMegabitsForASecond) {
  // A lower bound is the mechanism (the shaper cannot release 1 MB over
  // 8 Mbit/s in less than 1 s); no upper bound is asserted.
  const JobAuth auth("zmq-shaped", "");
  Group g = make_group(2, auth, true, Logger::null(), LinkShaperOptions{8.0, 0.0});
  EXPECT_TRUE(g.ranks[0]->link_shaped());
  const std::vector<std::byte> message = pattern(1'000'000, 0, 1, 3, 0);
  const auto start = std::chrono::steady_clock::now();
  g.ranks[0]->send(1, 3, message, "shaped send", Deadline::after(20s));
  const std::vector<std::byte> got = g.ranks[1]->recv(0, 3, "shaped recv", Deadline::after(20s));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(got, message);
  EXPECT_GE(elapsed, 900ms);
  // Heartbeats bypass the shaper and small messages still flow both ways.
  g.ranks[1]->send(0, 4, pattern(10, 1, 0, 4, 0), "reply", Deadline::after(20s));
  EXPECT_EQ(g.ranks[0]->recv(1, 4, "reply", Deadline::after(20s)), pattern(10, 1, 0, 4, 0));
}

TEST(ZmqTransport, ShapedTransportsKeepTheCommunicatorOffSharedMemory) {
  const JobAuth auth("zmq-shaped-no-shm", "");
  Group g = make_group(2, auth, true, Logger::null(), LinkShaperOptions{10'000.0, 0.0});
  std::array<bool, 2> shm{true, true};  // not vector<bool>: its bits share bytes
  std::vector<std::vector<float>> results(2);
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < 2; ++r) {
      threads.emplace_back([&, r] {
        CommunicatorOptions o;
        o.job_id = "shaped-no-shm";
        o.shm_allreduce = true;
        o.timeout = 20s;
        Communicator comm(*g.ranks[static_cast<size_t>(r)], o);
        shm[static_cast<size_t>(r)] = comm.uses_shm();
        std::vector<float> data(1000, static_cast<float>(r + 1));
        comm.allreduce(data, ReduceOp::kSum);
        results[static_cast<size_t>(r)] = data;
      });
    }
  }
  EXPECT_FALSE(shm[0]);
  EXPECT_FALSE(shm[1]);
  EXPECT_EQ(results[0], std::vector<float>(1000, 3.0f));
  EXPECT_EQ(results[1], std::vector<float>(1000, 3.0f));
}

}  // namespace
}  // namespace dtrain::comm
