// The elastic coordinator with every worker on a thread of this process (the
// coordinator and the clients speak tcp on loopback, as between processes):
// generations, rank order across re-formations, the settle deadline,
// min_workers, the endpoint round, and refusals of unauthenticated or
// left-out workers.
#include "comm/rendezvous/elastic_rendezvous.h"

#include <gtest/gtest.h>

#include <future>
#include <optional>
#include <thread>

#include "core/error.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;

constexpr const char* kJob = "elastic-rdv";
constexpr const char* kSecret = "s3cret";

ElasticRendezvousOptions options(int slots, int min_workers, std::chrono::milliseconds settle) {
  ElasticRendezvousOptions o;
  o.slots = slots;
  o.min_workers = min_workers;
  o.settle = settle;
  return o;
}

struct Fixture {
  Fixture(int slots, int min_workers, std::chrono::milliseconds settle = 60s)
      : server("127.0.0.1", 0, options(slots, min_workers, settle), JobAuth(kJob, kSecret),
               Logger::null()),
        slots(slots) {
    for (int s = 0; s < slots; ++s) server.set_alive(s, true);
  }
  std::unique_ptr<ElasticRendezvousClient> client(int slot, const char* secret = kSecret,
                                                  const char* job = kJob) {
    return std::make_unique<ElasticRendezvousClient>(server.address(), slot, slots,
                                                     JobAuth(job, secret), Logger::null());
  }
  ElasticRendezvousServer server;
  int slots;
};

std::future<std::optional<ElasticGeneration>> join_async(ElasticRendezvousClient& c,
                                                         std::optional<uint32_t> member_of,
                                                         std::chrono::milliseconds timeout = 20s) {
  return std::async(std::launch::async, [&c, member_of, timeout] {
    return c.join(member_of, Deadline::after(timeout));
  });
}

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

// Forms generation 0 over every slot of `f`.
std::vector<std::unique_ptr<ElasticRendezvousClient>> form_first(Fixture& f) {
  std::vector<std::unique_ptr<ElasticRendezvousClient>> clients;
  for (int s = 0; s < f.slots; ++s) clients.push_back(f.client(s));
  std::vector<std::future<std::optional<ElasticGeneration>>> joins;
  for (int s = f.slots - 1; s >= 0; --s) joins.push_back(join_async(*clients[s], std::nullopt));
  for (auto& j : joins) {
    const auto m = j.get();
    EXPECT_TRUE(m.has_value());
    if (m) {
      EXPECT_EQ(m->generation, 0u);
    }
  }
  return clients;
}

TEST(ElasticRendezvous, FirstGenerationOrdersSlotsAndExchangesEndpoints) {
  Fixture f(3, 3);
  std::vector<std::unique_ptr<ElasticRendezvousClient>> clients;
  for (int s = 0; s < 3; ++s) clients.push_back(f.client(s));
  std::vector<std::future<std::optional<ElasticGeneration>>> joins;
  for (int s = 2; s >= 0; --s) joins.push_back(join_async(*clients[s], std::nullopt));
  std::vector<ElasticGeneration> members;
  for (auto& j : joins) members.push_back(*j.get());
  for (const ElasticGeneration& m : members) {
    EXPECT_EQ(m.generation, 0u);
    EXPECT_EQ(m.slots, (std::vector<int>{0, 1, 2}));
    EXPECT_EQ(m.slots[static_cast<size_t>(m.rank)], 2 - static_cast<int>(&m - members.data()));
  }
  std::vector<std::future<std::vector<PeerEndpoint>>> tables;
  for (int s = 0; s < 3; ++s) {
    tables.push_back(std::async(std::launch::async, [&, s] {
      const PeerEndpoint self{s, "host", fmt::format("tcp://127.0.0.1:{}", 9000 + s), ""};
      return clients[s]->exchange_endpoints(0, self, Deadline::after(20s));
    }));
  }
  for (auto& t : tables) {
    const std::vector<PeerEndpoint> table = t.get();
    ASSERT_EQ(table.size(), 3u);
    for (int r = 0; r < 3; ++r)
      EXPECT_EQ(table[r].tcp_endpoint, fmt::format("tcp://127.0.0.1:{}", 9000 + r));
  }
  EXPECT_EQ(f.server.generation(), std::optional<uint32_t>(0));
}

TEST(ElasticRendezvous, SurvivorsKeepTheirOrderAndANewWorkerJoinsLast) {
  Fixture f(3, 2);
  auto clients = form_first(f);
  // Slot 0 dies; its replacement registers first and waits for the members.
  f.server.set_alive(0, false);
  clients[0].reset();
  f.server.set_alive(0, true);
  auto replacement = f.client(0);
  auto joiner = join_async(*replacement, std::nullopt);
  // The members learn of the waiting worker by polling (what rank 0 does
  // between steps); nothing forms before they join.
  const Deadline deadline = Deadline::after(20s);
  uint32_t waiting = 0;
  while ((waiting = clients[1]->poll()) == 0 && !deadline.expired())
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(waiting, 1u);
  EXPECT_EQ(f.server.generation(), std::optional<uint32_t>(0));
  auto a = join_async(*clients[2], 0u);
  auto b = join_async(*clients[1], 0u);
  for (auto* j : {&joiner, &a, &b}) {
    const auto m = j->get();
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->generation, 1u);
    EXPECT_EQ(m->slots, (std::vector<int>{1, 2, 0}));
  }
  EXPECT_EQ(clients[1]->poll(), 0u);
}

TEST(ElasticRendezvous, AReplacedMemberIsNotAwaitedNorAMember) {
  Fixture f(3, 2);  // settle 60 s: a round that waited for slot 1 would time out
  auto clients = form_first(f);
  f.server.set_alive(1, false);
  f.server.set_alive(1, true);  // its replacement started but has not joined yet
  auto a = join_async(*clients[0], 0u, 10s), b = join_async(*clients[2], 0u, 10s);
  for (auto* j : {&a, &b}) {
    const auto m = j->get();
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->generation, 1u);
    EXPECT_EQ(m->slots, (std::vector<int>{0, 2}));
  }
  auto replacement = f.client(1);
  EXPECT_TRUE(
      contains(comm_error([&] { replacement->join(0u, Deadline::after(20s)); }), "left out"));
}

TEST(ElasticRendezvous, SettleDeadlineFormsWithoutASilentSlot) {
  Fixture f(3, 2, 300ms);
  auto c0 = f.client(0), c1 = f.client(1);
  auto a = join_async(*c0, std::nullopt), b = join_async(*c1, std::nullopt);
  for (auto* j : {&a, &b}) {
    const auto m = j->get();
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->slots, (std::vector<int>{0, 1}));
  }
  // The silent slot, once it arrives, is a new worker for the next round.
  auto c2 = f.client(2);
  EXPECT_TRUE(contains(comm_error([&] { c2->join(0u, Deadline::after(20s)); }), "left out"));
}

TEST(ElasticRendezvous, NoGroupBelowMinWorkers) {
  Fixture f(3, 3, 50ms);
  f.server.set_alive(2, false);
  auto c0 = f.client(0), c1 = f.client(1);
  auto a = join_async(*c0, std::nullopt, 1500ms), b = join_async(*c1, std::nullopt, 1500ms);
  for (auto* j : {&a, &b}) {
    try {
      j->get();
      ADD_FAILURE() << "a group of 2 formed with min_workers 3";
    } catch (const TimeoutError& e) {
      EXPECT_TRUE(contains(e.what(), "re-form")) << e.what();
    }
  }
  EXPECT_FALSE(f.server.generation().has_value());
}

TEST(ElasticRendezvous, UnauthenticatedAndForeignRegistrationsAreRefused) {
  Fixture f(2, 2);
  auto intruder = f.client(0, "wrong secret");
  EXPECT_TRUE(
      contains(comm_error([&] { intruder->join(std::nullopt, Deadline::after(20s)); }), "refused"));
  auto foreign = f.client(1, kSecret, "another-job");
  EXPECT_TRUE(
      contains(comm_error([&] { foreign->join(std::nullopt, Deadline::after(20s)); }), "refused"));
  // Neither took a place: the real workers form the group.
  auto clients = form_first(f);
  EXPECT_EQ(f.server.generation(), std::optional<uint32_t>(0));
}

TEST(ElasticRendezvous, EndpointRoundFailsWhenAMemberIsLost) {
  Fixture f(3, 2);
  auto clients = form_first(f);
  auto exchange = [&](int s) {
    return std::async(std::launch::async, [&, s] {
      return comm_error([&] {
        clients[s]->exchange_endpoints(0, PeerEndpoint{s, "h", "tcp://127.0.0.1:1", ""},
                                       Deadline::after(20s));
      });
    });
  };
  auto a = exchange(0), b = exchange(1);
  f.server.set_alive(2, false);
  for (auto* e : {&a, &b}) {
    const std::string error = e->get();
    EXPECT_TRUE(contains(error, "generation 0 lost slot 2")) << error;
  }
  // The survivors re-join as members of generation 0.
  auto x = join_async(*clients[0], 0u), y = join_async(*clients[1], 0u);
  for (auto* j : {&x, &y}) {
    const auto m = j->get();
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->generation, 1u);
    EXPECT_EQ(m->slots, (std::vector<int>{0, 1}));
  }
}

// Two processes join for one slot in the same round (the rightful worker
// and an outsider, in either order): the coordinator cannot tell which is
// rightful, so both are told at once and the round forms without the slot.
TEST(ElasticRendezvous, TwoProcessesJoiningForOneSlotAreBothRefusedAtOnce) {
  Fixture f(2, 1);  // settle 60 s: the round cannot close between the two joins
  auto rightful = f.client(1), outsider = f.client(1);
  auto a = std::async(std::launch::async, [&] {
    return comm_error([&] { rightful->join(std::nullopt, Deadline::after(20s)); });
  });
  auto b = std::async(std::launch::async, [&] {
    return comm_error([&] { outsider->join(std::nullopt, Deadline::after(20s)); });
  });
  for (auto* told : {&a, &b}) {
    const std::string error = told->get();
    EXPECT_TRUE(contains(error,
                         "refused slot 1: slot 1 was claimed by two processes in the same "
                         "round: two workers were started for slot 1, or an outsider "
                         "joined as slot 1 (set DTRAIN_JOB_SECRET"))
        << error;
    EXPECT_FALSE(contains(error, "timed out")) << error;
  }
  f.server.set_alive(1, false);  // what the launcher does when the refused worker exits
  auto c0 = f.client(0);
  const auto m = c0->join(std::nullopt, Deadline::after(20s));
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->slots, (std::vector<int>{0}));
}

TEST(ElasticRendezvous, ANewWorkerForASlotWhoseMemberRunsIsRefusedAtOnce) {
  Fixture f(2, 2);
  auto clients = form_first(f);
  auto second = f.client(1);
  const std::string error = comm_error([&] { second->join(std::nullopt, Deadline::after(20s)); });
  EXPECT_TRUE(contains(error,
                       "slot 1 is held by a live member of generation 0, yet another "
                       "process joins as a new worker for it"))
      << error;
  EXPECT_EQ(clients[0]->poll(), 0u);  // nobody waits to join
}

// An endpoint from a connection that did not join the generation for its
// slot is refused; the table carries the endpoints of the members only.
TEST(ElasticRendezvous, AnEndpointIsTakenOnlyFromTheProcessThatJoined) {
  Fixture f(2, 2);
  auto clients = form_first(f);
  auto outsider = f.client(1);
  const std::string error = comm_error([&] {
    outsider->exchange_endpoints(0, PeerEndpoint{1, "intruder", "tcp://10.6.6.6:6666", ""},
                                 Deadline::after(20s));
  });
  EXPECT_TRUE(contains(error,
                       "slot 1 (rank 1 of generation 0) joined from another process; an "
                       "endpoint is taken only from the process that joined"))
      << error;
  std::vector<std::future<std::vector<PeerEndpoint>>> tables;
  for (int s = 0; s < 2; ++s) {
    tables.push_back(std::async(std::launch::async, [&, s] {
      return clients[s]->exchange_endpoints(
          0, PeerEndpoint{s, "host", fmt::format("tcp://127.0.0.1:{}", 9100 + s), ""},
          Deadline::after(20s));
    }));
  }
  for (auto& t : tables) {
    const std::vector<PeerEndpoint> table = t.get();
    ASSERT_EQ(table.size(), 2u);
    EXPECT_EQ(table[1].tcp_endpoint, "tcp://127.0.0.1:9101");
  }
}

TEST(ElasticRendezvous, FinishedAndStoppedJobsAnswerWaitingWorkers) {
  Fixture f(2, 1);
  auto clients = form_first(f);
  f.server.set_alive(1, false);
  f.server.set_alive(1, true);
  auto late = f.client(1);
  auto waiting = join_async(*late, std::nullopt);
  // Slot 1's new process is no member: its exit does not finish the job.
  EXPECT_FALSE(f.server.finish(1));
  EXPECT_FALSE(f.server.finished());
  EXPECT_TRUE(f.server.finish(0));  // the member's does
  EXPECT_TRUE(f.server.finished());
  EXPECT_FALSE(f.server.members_done());  // slot 0 has not ended yet
  f.server.set_alive(0, false);
  EXPECT_TRUE(f.server.members_done());
  EXPECT_FALSE(waiting.get().has_value());

  Fixture g(2, 2);
  auto c0 = g.client(0);
  auto stopped = std::async(std::launch::async, [&] {
    return comm_error([&] { c0->join(std::nullopt, Deadline::after(20s)); });
  });
  g.server.stop("2 workers left, fewer than min_workers");
  EXPECT_TRUE(contains(stopped.get(), "fewer than min_workers"));
}

// A stopped member (alive to the launcher, silent to its peers): the
// survivors name it when they join, and the round closes without waiting the
// settle time (60 s here, longer than the joins' deadline). When it wakes up
// and joins as a member of its old generation it is told it was left out,
// and its exit does not finish the job.
TEST(ElasticRendezvous, AMemberReportedSilentIsNotWaitedForAndIsToldItWasLeftOut) {
  Fixture f(3, 2);
  auto clients = form_first(f);
  auto j0 = std::async(std::launch::async,
                       [&] { return clients[0]->join(0u, Deadline::after(20s), {1}); });
  auto j2 = std::async(std::launch::async,
                       [&] { return clients[2]->join(0u, Deadline::after(20s), {1}); });
  const auto m0 = j0.get();
  const auto m2 = j2.get();
  ASSERT_TRUE(m0 && m2);
  EXPECT_EQ(m0->generation, 1u);
  EXPECT_EQ(m0->slots, (std::vector<int>{0, 2}));

  LeftOutError* seen = nullptr;
  std::string message;
  try {
    clients[1]->join(0u, Deadline::after(20s));
  } catch (LeftOutError& e) {
    seen = &e;
    message = e.what();
  }
  EXPECT_NE(seen, nullptr) << "a left-out member must get LeftOutError";
  EXPECT_TRUE(contains(message,
                       "slot 1 was left out: it was a member of generation 0, and the "
                       "group went on without it"))
      << message;
  EXPECT_FALSE(f.server.finish(1));
  EXPECT_FALSE(f.server.finished());
}

// Suspects are checked: a slot outside the job is refused.
TEST(ElasticRendezvous, AJoinNamingASuspectOutsideTheJobIsRefused) {
  Fixture f(2, 1);
  auto clients = form_first(f);
  const std::string error = comm_error([&] { clients[0]->join(0u, Deadline::after(20s), {7}); });
  EXPECT_TRUE(contains(error, "suspect slot 7 outside 0..1")) << error;
}

}  // namespace
}  // namespace dtrain::comm
