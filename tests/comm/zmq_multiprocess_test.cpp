// ZmqTransport across real processes on loopback. The test process hosts the
// rendezvous coordinator and spawns its own binary once per rank, running
// ZmqProcesses.DISABLED_Rank, which reads its role from DTRAIN_TEST_*
// variables. A child's failed expectations make it exit non-zero.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "comm/rendezvous/rendezvous.h"
#include "comm/transport/zmq_transport.h"
#include "core/error.h"
#include "multiprocess_job.h"
#include "testing/process.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;
using testing::ChildProcess;

constexpr auto kChildDeadline = 90s;
// A survivor's recv from the victim: far longer than failure detection
// (heartbeat timeout 500 ms), so a CommError that is not a TimeoutError
// proves the failure was detected, not waited out.
constexpr auto kSurvivorRecv = 30s;

std::vector<std::byte> pattern(size_t n, int src, int dst, uint64_t tag, int index) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = static_cast<std::byte>(src * 31 + dst * 17 + tag * 7 + index * 3 + i);
  }
  return out;
}

// ------------------------------------------------------------ parent side

using test::expect_exit_ok;
using test::ProcessJob;

ProcessJob make_job(const std::string& test, int world, std::string secret) {
  return ProcessJob("ZmqProcesses.DISABLED_Rank", test, world, std::move(secret));
}

class ZmqAllToAll : public ::testing::TestWithParam<int> {};

TEST_P(ZmqAllToAll, EveryPairEverySizeInOrder) {
  const int world = GetParam();
  ProcessJob job = make_job("alltoall", world, world == 3 ? "shared secret" : "");
  job.spawn_all("alltoall");
  for (int r = 0; r < world; ++r)
    expect_exit_ok(job.children[r], fmt::format("rank {}", r), kChildDeadline);
}

INSTANTIATE_TEST_SUITE_P(Ranks, ZmqAllToAll, ::testing::Values(2, 3, 4, 7));

// The last rank becomes unreachable while every other rank is inside recv()
// from it: killed (its sockets close) or stopped (it just goes silent).
void run_victim_test(const char* scenario, int world, int sig) {
  ProcessJob job = make_job(scenario, world, "");
  test::run_victim_test(job, scenario, sig, kChildDeadline);
}

TEST(ZmqPeerFailure, KilledPeerFailsEveryPendingRecvNamingIt) {
  run_victim_test("victim", 3, SIGKILL);
}

TEST(ZmqPeerFailure, StoppedPeerFailsByHeartbeatNamingIt) { run_victim_test("victim", 3, SIGSTOP); }

TEST(ZmqAuthentication, ProcessWithWrongSecretCannotJoin) {
  ProcessJob job = make_job("auth", 2, "right secret");
  ChildProcess intruder = job.spawn(1, "intruder", "wrong secret");
  expect_exit_ok(intruder, "intruder", kChildDeadline);
  job.spawn_all("alltoall");
  for (int r = 0; r < 2; ++r)
    expect_exit_ok(job.children[r], fmt::format("rank {}", r), kChildDeadline);
}

// ------------------------------------------------------------ child side

void all_to_all(ZmqTransport& t) {
  const int me = t.rank();
  const int world = t.size();
  const std::vector<size_t> sizes{1, 4099, (1 << 20) + 13};
  const auto deadline = Deadline::after(60s);
  for (int peer = 0; peer < world; ++peer) {
    if (peer == me) continue;
    for (uint64_t tag : {uint64_t{1}, uint64_t{2}}) {
      for (int i = 0; i < static_cast<int>(sizes.size()); ++i) {
        t.send(peer, tag, pattern(sizes[i], me, peer, tag, i), "alltoall", deadline);
      }
    }
  }
  // Several MiB to the next rank only (keeps memory small at 7 ranks).
  const int next = (me + 1) % world;
  const int prev = (me + world - 1) % world;
  t.send(next, 3, pattern(5 << 20, me, next, 3, 0), "alltoall", deadline);
  for (int peer = 0; peer < world; ++peer) {
    if (peer == me) continue;
    for (uint64_t tag : {uint64_t{2}, uint64_t{1}}) {
      for (int i = 0; i < static_cast<int>(sizes.size()); ++i) {
        ASSERT_EQ(t.recv(peer, tag, "alltoall", deadline), pattern(sizes[i], peer, me, tag, i))
            << "from rank " << peer << " tag " << tag << " message " << i;
      }
    }
  }
  std::vector<std::byte> big(5 << 20);
  t.recv_into(prev, 3, big, "alltoall", deadline);
  ASSERT_EQ(big, pattern(5 << 20, prev, me, 3, 0));
  EXPECT_EQ(t.dropped_frames(), 0u);
}

void victim_scenario(ZmqTransport& t) {
  const int victim = t.size() - 1;
  const std::vector<std::byte> hello{std::byte{1}};
  if (t.rank() == victim) {
    for (int peer = 0; peer < victim; ++peer) t.send(peer, 9, hello, "hello", Deadline::after(30s));
    for (int peer = 0; peer < victim; ++peer) t.recv(peer, 9, "ack", Deadline::after(30s));
    std::printf("%s\n", test::kReady);
    std::fflush(stdout);
    // The parent kills or stops this process now.
    t.recv(0, 99, "wait", Deadline::after(120s));
    ADD_FAILURE() << "victim survived";
    return;
  }
  t.recv(victim, 9, "hello", Deadline::after(30s));
  t.send(victim, 9, hello, "ack", Deadline::after(30s));
  try {
    t.recv(victim, 10, "allreduce", Deadline::after(kSurvivorRecv));
    ADD_FAILURE() << "a message from the victim";
  } catch (const TimeoutError& e) {
    ADD_FAILURE() << "failure not detected before the call's deadline: " << e.what();
  } catch (const CommError& e) {
    EXPECT_EQ(e.peer(), victim) << e.what();
    EXPECT_EQ(e.operation(), "allreduce");
    EXPECT_EQ(std::string(e.what()).rfind(fmt::format("allreduce with rank {}: ", victim), 0), 0u)
        << e.what();
    std::printf("survivor %d: %s\n", t.rank(), e.what());
  }
}

TEST(ZmqProcesses, DISABLED_Rank) {
  const int rank = std::stoi(test::env_or("DTRAIN_TEST_RANK", "-1"));
  const int world = std::stoi(test::env_or("DTRAIN_TEST_WORLD", "0"));
  const std::string scenario = test::env_or("DTRAIN_TEST_SCENARIO", "");
  const std::string coordinator = test::env_or("DTRAIN_TEST_COORDINATOR", "");
  ASSERT_GE(rank, 0) << "run by the multi-process tests only";
  std::printf("%s rank %d scenario %s\n", test::kStarted, rank, scenario.c_str());
  std::fflush(stdout);
  const JobAuth auth(test::env_or("DTRAIN_TEST_JOB", ""), test::env_or("DTRAIN_TEST_SECRET", ""));

  ZmqTransportOptions options;
  options.rank = rank;
  options.world_size = world;
  options.heartbeat_interval = 100ms;
  // Short only where failure detection is under test: seven ranks under
  // ASan on two cores can starve an I/O thread for longer than 500 ms.
  options.heartbeat_timeout = scenario == "victim" ? 500ms : 10000ms;
  options.ipc_dir = test::env_or("DTRAIN_TEST_IPC_DIR", "/tmp");
  if (scenario == "intruder") {
    try {
      connect_zmq_transport(options, auth, coordinator, false, Deadline::after(30s),
                            Logger::null());
      ADD_FAILURE() << "joined with the wrong secret";
    } catch (const TimeoutError& e) {
      ADD_FAILURE() << "not refused, timed out: " << e.what();
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("MAC mismatch"), std::string::npos) << e.what();
    }
    return;
  }
  auto transport = connect_zmq_transport(options, auth, coordinator, false, Deadline::after(30s),
                                         Logger::stderr_logger());
  if (scenario == "alltoall")
    all_to_all(*transport);
  else if (scenario == "victim")
    victim_scenario(*transport);
  else
    FAIL() << "unknown scenario " << scenario;
}

}  // namespace
}  // namespace dtrain::comm
