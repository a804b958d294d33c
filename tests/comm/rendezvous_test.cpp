// Rendezvous with every rank on a thread of this process (the coordinator
// and the clients speak tcp on loopback, as between processes).
#include "comm/rendezvous/rendezvous.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "core/error.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;

PeerEndpoint endpoint_of(int rank) {
  return PeerEndpoint{rank, "host", fmt::format("tcp://127.0.0.1:{}", 7000 + rank),
                      fmt::format("ipc:///tmp/r{}", rank)};
}

std::future<std::vector<PeerEndpoint>> register_async(const std::string& coordinator, int rank,
                                                      int world, const JobAuth& auth) {
  return std::async(std::launch::async, [=] {
    return rendezvous(coordinator, endpoint_of(rank), world, auth, Deadline::after(20s),
                      Logger::null());
  });
}

// The message of the CommError that `f` throws ("no error" when none).
template <typename F>
std::string comm_error(F&& f) {
  try {
    f();
  } catch (const CommError& e) {
    return e.what();
  }
  return "no error";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Rendezvous, EveryRankGetsTheWholeTable) {
  for (int world : {1, 2, 5}) {
    const JobAuth auth("rdv-table", "secret");
    RendezvousServer server("127.0.0.1", 0, world, auth, Logger::null());
    std::vector<std::future<std::vector<PeerEndpoint>>> ranks;
    for (int r = world - 1; r >= 0; --r)
      ranks.push_back(register_async(server.address(), r, world, auth));
    for (auto& f : ranks) {
      const auto table = f.get();
      ASSERT_EQ(table.size(), static_cast<size_t>(world));
      for (int r = 0; r < world; ++r) EXPECT_EQ(table[r], endpoint_of(r));
    }
    EXPECT_TRUE(server.complete());
  }
}

// How rendezvous() with `self` ended: the table's size, "refused: " and the
// CommError's message, or "timed out: " and the TimeoutError's (a refusal
// must come at once, not at the deadline).
std::string outcome(const std::string& coordinator, const PeerEndpoint& self, int world,
                    const JobAuth& auth) {
  try {
    const auto table =
        rendezvous(coordinator, self, world, auth, Deadline::after(30s), Logger::null());
    return fmt::format("table of {}", table.size());
  } catch (const TimeoutError& e) {
    return std::string("timed out: ") + e.what();
  } catch (const CommError& e) {
    return std::string("refused: ") + e.what();
  }
}

std::future<std::string> outcome_async(const std::string& coordinator, const PeerEndpoint& self,
                                       int world, const JobAuth& auth) {
  return std::async(std::launch::async, [=] { return outcome(coordinator, self, world, auth); });
}

const PeerEndpoint kOutsider{1, "intruder", "tcp://10.6.6.6:6666", ""};

// The rightful rank registers first: the second claim is refused at once,
// naming both, and the first is told at once that the rendezvous is void.
TEST(Rendezvous, ADuplicateRankVoidsTheRendezvousAndBothClaimantsAreToldAtOnce) {
  const JobAuth auth("rdv-dup", "");
  RendezvousServer server("127.0.0.1", 0, 2, auth, Logger::null());
  auto first = outcome_async(server.address(), endpoint_of(1), 2, auth);
  ASSERT_TRUE(server.wait_until_registered(1, Deadline::after(20s)));
  const std::string second = outcome(server.address(), kOutsider, 2, auth);
  EXPECT_TRUE(contains(
      second, "refused: rendezvous with unknown peer: the coordinator at " + server.address() +
                  " refused rank 1: rank 1 is already registered by another process: "
                  "host 'host', endpoint tcp://127.0.0.1:7001 (registered first; this "
                  "registration: host 'intruder', endpoint tcp://10.6.6.6:6666); two "
                  "processes were started with rank 1, or an outsider registered as "
                  "rank 1 (set DTRAIN_JOB_SECRET"))
      << second;
  const std::string holder = first.get();
  EXPECT_TRUE(contains(holder, "refused: ")) << holder;
  EXPECT_TRUE(contains(holder,
                       "the rendezvous is void: rank 1 was registered by two processes (host "
                       "'host', endpoint tcp://127.0.0.1:7001 first, then host 'intruder', "
                       "endpoint tcp://10.6.6.6:6666)"))
      << holder;
  ASSERT_TRUE(server.conflict().has_value());
  EXPECT_TRUE(contains(*server.conflict(), "the rendezvous is void")) << *server.conflict();
}

// An outsider takes rank 1 before the rightful process: the rightful one is
// told at once who holds its slot, and the table goes to nobody, not even to
// the ranks that registered before the conflict or arrive after it.
TEST(Rendezvous, WhileADuplicateConflictExistsTheTableIsSentToNobody) {
  const JobAuth auth("rdv-outsider", "");
  RendezvousServer server("127.0.0.1", 0, 3, auth, Logger::null());
  auto rank0 = outcome_async(server.address(), endpoint_of(0), 3, auth);
  ASSERT_TRUE(server.wait_until_registered(1, Deadline::after(20s)));
  auto outsider = outcome_async(server.address(), kOutsider, 3, auth);
  ASSERT_TRUE(server.wait_until_registered(2, Deadline::after(20s)));
  const std::string rightful = outcome(server.address(), endpoint_of(1), 3, auth);
  EXPECT_TRUE(contains(
      rightful, "refused: rendezvous with unknown peer: the coordinator at " + server.address() +
                    " refused rank 1: rank 1 is already registered by another process: "
                    "host 'intruder', endpoint tcp://10.6.6.6:6666 (registered first"))
      << rightful;
  EXPECT_TRUE(contains(rightful, "set DTRAIN_JOB_SECRET")) << rightful;
  const std::string late = outcome(server.address(), endpoint_of(2), 3, auth);
  for (const std::string& told : {rank0.get(), outsider.get(), late}) {
    EXPECT_TRUE(contains(told, "refused: ")) << told;
    EXPECT_TRUE(contains(told, "the rendezvous is void: rank 1 was registered by two processes"))
        << told;
  }
  EXPECT_FALSE(server.complete());
  EXPECT_EQ(server.registered(), (std::vector<int>{0, 1}));
}

// Once the table went out it cannot be taken back: a later claim is refused
// at once, naming the process that holds the rank.
TEST(Rendezvous, AClaimAfterTheTableWentOutIsToldWhoHoldsTheRank) {
  const JobAuth auth("rdv-late", "");
  RendezvousServer server("127.0.0.1", 0, 2, auth, Logger::null());
  auto outsider = outcome_async(server.address(), kOutsider, 2, auth);
  EXPECT_EQ(outcome(server.address(), endpoint_of(0), 2, auth), "table of 2");
  EXPECT_EQ(outsider.get(), "table of 2");
  const std::string rightful = outcome(server.address(), endpoint_of(1), 2, auth);
  EXPECT_TRUE(contains(rightful,
                       "refused rank 1: rank 1 is already registered by another process: host "
                       "'intruder', endpoint tcp://10.6.6.6:6666 (the table went out to every "
                       "rank); two processes were started with rank 1, or an outsider registered "
                       "as rank 1 (set DTRAIN_JOB_SECRET"))
      << rightful;
  EXPECT_FALSE(server.conflict().has_value());
}

TEST(Rendezvous, MismatchedWorldSizeJobAndSecretAreRefused) {
  const JobAuth auth("rdv-refuse", "right");
  RendezvousServer server("127.0.0.1", 0, 2, auth, Logger::null());
  auto call = [&](int world, const JobAuth& a) {
    return comm_error([&] {
      rendezvous(server.address(), endpoint_of(1), world, a, Deadline::after(10s), Logger::null());
    });
  };
  const std::string world = call(3, auth);
  EXPECT_TRUE(contains(world, "rank 1 registered with world size 3, the coordinator expects 2"))
      << world;
  const std::string job = call(2, JobAuth("another-job", "right"));
  EXPECT_TRUE(contains(job, "refused rank 1")) << job;
  EXPECT_TRUE(contains(job, "does not match this job's")) << job;
  const std::string secret = call(2, JobAuth("rdv-refuse", "wrong"));
  EXPECT_TRUE(contains(secret, "refused rank 1")) << secret;
  EXPECT_TRUE(contains(secret, "MAC mismatch")) << secret;
  const std::string none = call(2, JobAuth("rdv-refuse", ""));
  EXPECT_TRUE(contains(none, "not authenticated but this job requires a secret")) << none;
  EXPECT_FALSE(server.complete());
}

TEST(Rendezvous, TimeoutNamesTheRanksThatNeverArrived) {
  const JobAuth auth("rdv-timeout", "");
  RendezvousServer server("127.0.0.1", 0, 4, auth, Logger::null());
  auto rank2 = register_async(server.address(), 2, 4, auth);
  ASSERT_TRUE(server.wait_until_registered(1, Deadline::after(20s)));
  try {
    rendezvous(server.address(), endpoint_of(0), 4, auth, Deadline::after(1s), Logger::null());
    FAIL() << "rendezvous completed with two of four ranks";
  } catch (const TimeoutError& e) {
    EXPECT_EQ(e.peer(), -1);
    EXPECT_TRUE(contains(e.what(), "waiting for ranks 1, 3 to register at the coordinator"))
        << e.what();
    EXPECT_TRUE(contains(e.what(), "(registered: 0, 2)")) << e.what();
  }
  EXPECT_EQ(server.registered(), (std::vector<int>{0, 2}));
  // Complete the job so that rank 2's call returns.
  auto rank1 = register_async(server.address(), 1, 4, auth);
  auto rank3 = register_async(server.address(), 3, 4, auth);
  EXPECT_EQ(rank1.get().size(), 4u);
  EXPECT_EQ(rank3.get().size(), 4u);
  EXPECT_EQ(rank2.get().size(), 4u);
}

TEST(Rendezvous, NoCoordinatorTimesOut) {
  int port = 0;
  {
    RendezvousServer probe("127.0.0.1", 0, 1, JobAuth("x", ""), Logger::null());
    port = probe.port();
  }
  try {
    rendezvous(fmt::format("127.0.0.1:{}", port), endpoint_of(0), 2, JobAuth("x", ""),
               Deadline::after(200ms), Logger::null());
    FAIL() << "no coordinator, yet rendezvous returned";
  } catch (const TimeoutError& e) {
    EXPECT_TRUE(contains(e.what(), "a reply from the coordinator")) << e.what();
  }
}

}  // namespace
}  // namespace dtrain::comm
