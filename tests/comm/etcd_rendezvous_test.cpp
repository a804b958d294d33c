// The etcd rendezvous (comm/rendezvous/etcd_rendezvous.h) against a real
// etcd started by the test (testing/etcd_server.h); participants run as
// threads, each with its own lease. Skipped when etcd is not installed.
// Outcomes are awaited with deadlines; no test asserts how long anything took
// beyond the bound an error must come within.
#include "comm/rendezvous/etcd_rendezvous.h"

#include <gtest/gtest.h>

#include <functional>
#include <thread>

#include "core/error.h"
#include "testing/etcd_server.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;

class EtcdRendezvous : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::etcd_installed()) GTEST_SKIP() << "etcd is not installed (scripts/setup.sh)";
    server_.emplace();
    testing::ready_etcd_client(*server_);
  }
  std::unique_ptr<EtcdElasticRendezvous> participant(int slot, int min, int max,
                                                     std::chrono::milliseconds settle = 60s,
                                                     std::chrono::seconds ttl = 10s) {
    EtcdRendezvousOptions o;
    o.endpoint = server_->endpoint();
    o.job_id = "job";
    o.slot = slot;
    o.min_workers = min;
    o.max_workers = max;
    o.settle = settle;
    o.lease_ttl = ttl;
    o.poll_interval = 20ms;
    o.call_timeout = 2s;
    return std::make_unique<EtcdElasticRendezvous>(o, Logger::null());
  }
  std::optional<testing::EtcdServer> server_;
};

// Runs `work(i)` on one thread per index; returns each thread's error text
// (empty: none).
std::vector<std::string> on_threads(size_t n, const std::function<void(size_t)>& work) {
  std::vector<std::string> errors(n);
  {
    std::vector<std::jthread> threads;
    for (size_t i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        try {
          work(i);
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    }
  }
  return errors;
}

PeerEndpoint endpoint_of(int rank, int slot) {
  return {rank, "host", fmt::format("tcp://127.0.0.1:{}", 1000 + slot), ""};
}

void expect_no_errors(const std::vector<std::string>& errors) {
  for (size_t i = 0; i < errors.size(); ++i) EXPECT_EQ(errors[i], "") << "participant " << i;
}

TEST_F(EtcdRendezvous, ParticipantsFormGenerationsAndExchangeEndpoints) {
  std::vector<std::unique_ptr<EtcdElasticRendezvous>> p;
  for (int slot : {7, 3, 5}) p.push_back(participant(slot, 3, 3));
  std::vector<ElasticGeneration> got(3);
  std::vector<std::vector<PeerEndpoint>> tables(3);
  for (uint32_t g = 0; g < 2; ++g) {
    expect_no_errors(on_threads(3, [&](size_t i) {
      const auto member_of = g == 0 ? std::nullopt : std::optional<uint32_t>(g - 1);
      got[i] = p[i]->join(member_of, Deadline::after(30s)).value();
      tables[i] = p[i]->exchange_endpoints(
          got[i].generation, endpoint_of(got[i].rank, p[i]->slot()), Deadline::after(30s));
    }));
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(got[i].generation, g);
      // A new group is ordered by slot; later ones keep that order.
      EXPECT_EQ(got[i].slots, (std::vector<int>{3, 5, 7}));
      ASSERT_LT(static_cast<size_t>(got[i].rank), got[i].slots.size());
      EXPECT_EQ(got[i].slots[static_cast<size_t>(got[i].rank)], p[i]->slot());
      ASSERT_EQ(tables[i].size(), 3u);
      for (int r = 0; r < 3; ++r) {
        EXPECT_EQ(tables[i][static_cast<size_t>(r)], endpoint_of(r, got[i].slots[r]));
      }
    }
  }
  p[0]->finish(Deadline::after(10s));
  EXPECT_EQ(p[1]->join(1u, Deadline::after(10s)), std::nullopt);
}

TEST_F(EtcdRendezvous, MemberWhoseLeaseLapsedIsDroppedAndRefusedWhenItComesBack) {
  // A long settle: only the lapsed lease can close the second round.
  std::vector<std::unique_ptr<EtcdElasticRendezvous>> p;
  for (int slot : {0, 1, 2}) p.push_back(participant(slot, 2, 3, 60s, 2s));
  std::vector<ElasticGeneration> got(3);
  expect_no_errors(on_threads(
      3, [&](size_t i) { got[i] = p[i]->join(std::nullopt, Deadline::after(30s)).value(); }));
  ASSERT_EQ(got[0].slots, (std::vector<int>{0, 1, 2}));
  p[1]->stop_keepalive();  // slot 1 hangs
  expect_no_errors(on_threads(2, [&](size_t i) {
    const size_t who = i == 0 ? 0 : 2;
    got[who] = p[who]->join(0u, Deadline::after(30s)).value();
  }));
  EXPECT_EQ(got[0].generation, 1u);
  EXPECT_EQ(got[0].slots, (std::vector<int>{0, 2}));
  EXPECT_EQ(got[2].slots, (std::vector<int>{0, 2}));
  // Slot 1 wakes up and joins as a member of generation 0.
  try {
    p[1]->join(0u, Deadline::after(10s));
    ADD_FAILURE() << "a stale member joined";
  } catch (const LeftOutError& e) {
    EXPECT_NE(std::string(e.what()).find("slot 1's lease expired"), std::string::npos) << e.what();
  }
  // A stale member whose lease is still alive is refused by generation.
  auto late = participant(1, 2, 3, 60s, 2s);
  EXPECT_THROW(late->join(0u, Deadline::after(10s)), LeftOutError);
}

TEST_F(EtcdRendezvous, EndpointsFailWhenAMemberLosesItsLeaseBeforeSendingOne) {
  auto a = participant(0, 2, 2, 60s, 2s);
  auto b = participant(1, 2, 2, 60s, 2s);
  std::array<ElasticGeneration, 2> got;
  expect_no_errors(on_threads(2, [&](size_t i) {
    got[i] = (i == 0 ? a : b)->join(std::nullopt, Deadline::after(30s)).value();
  }));
  b->stop_keepalive();  // hangs before its endpoint
  try {
    a->exchange_endpoints(0, endpoint_of(got[0].rank, 0), Deadline::after(30s));
    ADD_FAILURE() << "endpoints without slot 1";
  } catch (const TimeoutError& e) {
    ADD_FAILURE() << "waited out the deadline: " << e.what();
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("generation 0 failed while forming: slot 1 (rank 1) "
                                         "lost its lease"),
              std::string::npos)
        << e.what();
  }
}

// Regression: a generation that failed while forming left its surviving
// members (none holds a trained state) joining as new workers, and "new
// workers alone keep waiting" kept them waiting for a member forever.
TEST_F(EtcdRendezvous, MembersOfAGenerationThatFailedWhileFormingFormTheNextOne) {
  auto a = participant(0, 2, 3, 60s, 2s);
  auto b = participant(1, 2, 3, 60s, 2s);
  auto c = participant(2, 2, 3, 60s, 2s);
  std::array<EtcdElasticRendezvous*, 3> all = {a.get(), b.get(), c.get()};
  expect_no_errors(on_threads(3, [&](size_t i) {
    EXPECT_EQ(all[i]->join(std::nullopt, Deadline::after(30s)).value().generation, 0u);
  }));
  a->stop_keepalive();  // dies before its endpoint
  std::array<ElasticGeneration, 2> next;
  expect_no_errors(on_threads(2, [&](size_t i) {
    try {
      all[i + 1]->exchange_endpoints(
          0, endpoint_of(static_cast<int>(i + 1), static_cast<int>(i + 1)), Deadline::after(30s));
      ADD_FAILURE() << "endpoints without slot 0";
    } catch (const TimeoutError& e) {
      ADD_FAILURE() << "waited out the deadline: " << e.what();
    } catch (const CommError&) {
    }
    next[i] = all[i + 1]->join(std::nullopt, Deadline::after(30s)).value();
  }));
  for (const ElasticGeneration& g : next) {
    EXPECT_EQ(g.generation, 1u);
    EXPECT_EQ(g.slots, (std::vector<int>{1, 2}));
  }
}

TEST_F(EtcdRendezvous, TwoParticipantsRacingFormOneGenerationEachRound) {
  auto a = participant(0, 2, 2);
  auto b = participant(1, 2, 2);
  std::array<ElasticGeneration, 2> got;
  for (uint32_t g = 0; g < 6; ++g) {
    expect_no_errors(on_threads(2, [&](size_t i) {
      const auto member_of = g == 0 ? std::nullopt : std::optional<uint32_t>(g - 1);
      got[i] = (i == 0 ? a : b)->join(member_of, Deadline::after(30s)).value();
    }));
    // Both closed the same round: one generation, numbered without gaps.
    EXPECT_EQ(got[0].generation, g);
    EXPECT_EQ(got[1].generation, g);
    EXPECT_EQ(got[0].slots, (std::vector<int>{0, 1}));
    EXPECT_EQ(got[1].slots, (std::vector<int>{0, 1}));
    EXPECT_NE(got[0].rank, got[1].rank);
  }
}

TEST_F(EtcdRendezvous, NewWorkerWaitsForTheGroupAndIsCountedByPoll) {
  // At least 2, so that the first group is slots 0 and 1 (then 1 s for more).
  auto a = participant(0, 2, 3, 1s);
  auto b = participant(1, 2, 3, 1s);
  std::array<ElasticGeneration, 3> got;
  expect_no_errors(on_threads(2, [&](size_t i) {
    got[i] = (i == 0 ? a : b)->join(std::nullopt, Deadline::after(30s)).value();
  }));
  ASSERT_EQ(got[0].slots, (std::vector<int>{0, 1}));
  auto c = participant(2, 2, 3, 1s);
  std::jthread newcomer([&] { got[2] = c->join(std::nullopt, Deadline::after(30s)).value(); });
  const Deadline seen = Deadline::after(30s);
  while (a->poll() == 0 && !seen.expired()) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(a->poll(), 1u);
  expect_no_errors(on_threads(
      2, [&](size_t i) { got[i] = (i == 0 ? a : b)->join(0u, Deadline::after(30s)).value(); }));
  newcomer.join();
  for (const ElasticGeneration& g : got) {
    EXPECT_EQ(g.generation, 1u);
    EXPECT_EQ(g.slots, (std::vector<int>{0, 1, 2}));
  }
}

TEST_F(EtcdRendezvous, StoppedEtcdIsAClearErrorWithinTheDeadline) {
  auto a = participant(0, 1, 1);
  ASSERT_EQ(a->join(std::nullopt, Deadline::after(30s))->generation, 0u);
  server_->kill();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    a->join(0u, Deadline::after(3s));
    ADD_FAILURE() << "joined without etcd";
  } catch (const TimeoutError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("etcd rendezvous of job 'job' at " + server_->endpoint()),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("last error"), std::string::npos) << what;
  }
  // Bounded by the deadline (twice it, for a loaded machine), never a hang.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 6s);
  EXPECT_THROW(participant(1, 1, 1), TimeoutError);
}

}  // namespace
}  // namespace dtrain::comm
