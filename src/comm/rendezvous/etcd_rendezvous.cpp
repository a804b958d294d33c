#include "comm/rendezvous/etcd_rendezvous.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "comm/rendezvous/etcd_lease_watch.h"

namespace dtrain::comm {

namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::chrono::milliseconds since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
}

bool contains(const std::vector<int>& v, int x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

struct EtcdElasticRendezvous::State {
  struct Entry {
    int slot = 0;
    bool member = false;  // a member of `gen` (else a new worker)
    std::vector<int> suspects;
  };
  int64_t gen = -1;
  std::vector<int> members;
  std::vector<Entry> round;
  bool finished = false;

  std::string text() const {
    Json r = Json::array();
    for (const Entry& e : round) {
      r.push_back({{"slot", e.slot}, {"member", e.member}, {"suspects", e.suspects}});
    }
    return Json{{"gen", gen}, {"members", members}, {"round", r}, {"finished", finished}}.dump();
  }

  static State parse(const std::string& text, const std::string& where) {
    try {
      const Json j = Json::parse(text);
      State s;
      s.gen = j.at("gen").get<int64_t>();
      s.members = j.at("members").get<std::vector<int>>();
      for (const Json& e : j.at("round")) {
        s.round.push_back({e.at("slot").get<int>(), e.at("member").get<bool>(),
                           e.at("suspects").get<std::vector<int>>()});
      }
      s.finished = j.at("finished").get<bool>();
      return s;
    } catch (const Json::exception& e) {
      throw DataError(fmt::format("{}: the rendezvous state '{}' is not dtrain's: {}", where,
                                  text.substr(0, 200), e.what()));
    }
  }

  const Entry* entry(int slot) const {
    for (const Entry& e : round) {
      if (e.slot == slot) return &e;
    }
    return nullptr;
  }
  uint32_t new_workers() const {
    return static_cast<uint32_t>(
        std::count_if(round.begin(), round.end(), [](const Entry& e) { return !e.member; }));
  }
};

// What one join() remembers between its reads of the state.
struct EtcdElasticRendezvous::Round {
  bool entered = false;
  int64_t gen = -1;                        // the state's generation when it entered
  std::optional<Clock::time_point> since;  // when the round could first close
};

EtcdElasticRendezvous::EtcdElasticRendezvous(EtcdRendezvousOptions options, Logger& logger)
    : options_(std::move(options)),
      logger_(logger),
      etcd_(options_.endpoint),
      prefix_("/dtrain/" + options_.job_id + "/") {
  if (options_.job_id.empty() || options_.job_id.find('/') != std::string::npos) {
    throw ConfigError(fmt::format("etcd rendezvous: job id '{}' must be non-empty, without '/'",
                                  options_.job_id));
  }
  if (options_.min_workers < 1 || options_.max_workers < options_.min_workers ||
      options_.lease_ttl.count() < 1) {
    throw ConfigError(fmt::format(
        "etcd rendezvous: need 1 <= min_workers ({}) <= max_workers ({}) and a lease TTL of at "
        "least 1 s ({} s)",
        options_.min_workers, options_.max_workers, options_.lease_ttl.count()));
  }
  take_lease(Deadline::after(options_.call_timeout));
  thread_ = std::jthread([this](std::stop_token stop) { renew(stop); });
}

EtcdElasticRendezvous::~EtcdElasticRendezvous() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
  if (!keepalive_) return;  // a hung host does not say goodbye
  try {
    etcd_.lease_revoke(lease_, Deadline::after(1s));
  } catch (const Error&) {
    // The lease expires by itself.
  }
}

template <typename Call>
auto EtcdElasticRendezvous::with_retry(const std::string& what, Deadline deadline, Call call) {
  const auto t0 = Clock::now();
  std::string last = "the deadline had passed before the first call";
  while (!deadline.expired()) {
    const auto left = deadline.remaining();
    try {
      return call(Deadline::after(std::min(left, options_.call_timeout)));
    } catch (const LeftOutError&) {
      throw;
    } catch (const CommError& e) {
      last = e.what();
    }
    std::this_thread::sleep_for(std::min(deadline.remaining(), std::chrono::milliseconds(200)));
  }
  throw TimeoutError(
      -1, fmt::format("etcd rendezvous of job '{}' at {}", options_.job_id, options_.endpoint),
      since(t0), fmt::format("{} (last error: {})", what, last));
}

std::pair<EtcdElasticRendezvous::State, std::string> EtcdElasticRendezvous::read_state(
    Deadline deadline) {
  const std::optional<EtcdKeyValue> kv = with_retry(
      "the rendezvous state", deadline, [&](Deadline d) { return etcd_.get(key("state"), d); });
  if (!kv) return {State{}, std::string()};
  return {State::parse(kv->value, etcd_.endpoint() + " " + key("state")), kv->value};
}

bool EtcdElasticRendezvous::swap_state(const std::string& expected, const State& next,
                                       Deadline deadline) {
  const std::optional<std::string> old =
      expected.empty() ? std::nullopt : std::optional<std::string>(expected);
  return with_retry("a write of the rendezvous state", deadline, [&](Deadline d) {
    return etcd_.compare_and_swap(key("state"), old, next.text(), 0, d);
  });
}

void EtcdElasticRendezvous::take_lease(Deadline deadline) {
  const int64_t lease = with_retry("a lease", deadline, [&](Deadline d) {
    return etcd_.lease_grant(options_.lease_ttl.count(), d);
  });
  with_retry("this participant's alive key", deadline, [&](Deadline d) {
    return etcd_.put(key(fmt::format("alive/{}", options_.slot)), "", lease, d);
  });
  lease_ = lease;
  lease_lost_ = false;
}

void EtcdElasticRendezvous::check_lease(std::optional<uint32_t> member_of, Deadline deadline) {
  if (!lease_lost_) {
    const int64_t ttl = with_retry("a renewal of the lease", deadline,
                                   [&](Deadline d) { return etcd_.lease_keepalive(lease_, d); });
    if (ttl == 0) lease_lost_ = true;
  }
  if (!lease_lost_) return;
  if (member_of) {
    throw LeftOutError(
        options_.slot, fmt::format("etcd rendezvous of job '{}'", options_.job_id),
        fmt::format("slot {}'s lease expired (silent past {} s): the group may have gone on "
                    "without this member of generation {}",
                    options_.slot, options_.lease_ttl.count(), *member_of));
  }
  take_lease(deadline);
}

std::vector<int> EtcdElasticRendezvous::alive_slots(Deadline deadline) {
  const std::string prefix = key("alive/");
  const auto kvs = with_retry("the alive keys", deadline,
                              [&](Deadline d) { return etcd_.range_prefix(prefix, d); });
  std::vector<int> slots;
  for (const EtcdKeyValue& kv : kvs) {
    try {
      slots.push_back(std::stoi(kv.key.substr(prefix.size())));
    } catch (const std::exception&) {
      throw DataError(fmt::format("etcd rendezvous: key '{}' is not dtrain's", kv.key));
    }
  }
  return slots;
}

bool EtcdElasticRendezvous::try_close(const State& state, const std::string& text, Round& round,
                                      Deadline deadline) {
  const std::vector<int> alive = alive_slots(deadline);
  std::vector<const State::Entry*> joined;
  std::set<int> suspects;
  for (const State::Entry& e : state.round) {
    if (contains(alive, e.slot)) joined.push_back(&e);
    suspects.insert(e.suspects.begin(), e.suspects.end());
  }
  const int n = static_cast<int>(joined.size());
  const bool member_joined =
      std::any_of(joined.begin(), joined.end(), [](const State::Entry* e) { return e->member; });
  // Every alive member of gen joined as new (gen failed while forming, as
  // it did for them: none holds a state beyond the job's initial one):
  // there is no member with state to wait for.
  bool stateless = false;
  for (int m : state.members) {
    if (!contains(alive, m)) continue;
    const State::Entry* e = state.entry(m);
    stateless = e && !e->member;
    if (!stateless) break;
  }
  const bool may = n >= options_.min_workers && (state.gen < 0 || member_joined || stateless);
  if (!may) {
    round.since.reset();
    return false;
  }
  if (!round.since) round.since = Clock::now();
  bool all_in = state.gen >= 0;
  for (int m : state.members) {
    if (contains(alive, m) && !suspects.contains(m) && !state.entry(m)) all_in = false;
  }
  if (!all_in && n < options_.max_workers && since(*round.since) < options_.settle) return false;
  // Ranks: the members of gen in their order, then new workers by slot.
  State next;
  next.gen = state.gen + 1;
  for (int m : state.members) {
    const State::Entry* e = state.entry(m);
    if (e && e->member && contains(alive, m)) next.members.push_back(m);
  }
  std::vector<int> fresh;
  for (const State::Entry* e : joined) {
    if (!contains(next.members, e->slot)) fresh.push_back(e->slot);
  }
  std::sort(fresh.begin(), fresh.end());
  next.members.insert(next.members.end(), fresh.begin(), fresh.end());
  if (static_cast<int>(next.members.size()) > options_.max_workers) {
    next.members.resize(static_cast<size_t>(options_.max_workers));
  }
  if (!swap_state(text, next, deadline)) return false;
  logger_.info("etcd rendezvous '{}': slot {} formed generation {}: slots {}", options_.job_id,
               options_.slot, next.gen, next.members);
  return true;
}

std::optional<ElasticGeneration> EtcdElasticRendezvous::join(std::optional<uint32_t> member_of,
                                                             Deadline deadline,
                                                             const std::vector<int>& suspects) {
  const auto t0 = Clock::now();
  check_lease(member_of, deadline);
  Round round;
  State state;
  while (!deadline.expired()) {
    std::string text;
    std::tie(state, text) = read_state(deadline);
    if (state.finished) return std::nullopt;
    const int64_t slot_rank = std::find(state.members.begin(), state.members.end(), options_.slot) -
                              state.members.begin();
    const bool in_members = slot_rank < static_cast<int64_t>(state.members.size());
    if (round.entered && state.gen > round.gen) {
      if (in_members) {
        waiting_ = 0;  // those waiting were taken
        return ElasticGeneration{static_cast<uint32_t>(state.gen), state.members,
                                 static_cast<int>(slot_rank)};
      }
      if (member_of) {
        throw LeftOutError(options_.slot,
                           fmt::format("etcd rendezvous of job '{}'", options_.job_id),
                           fmt::format("generation {} formed without slot {} (its lease "
                                       "lapsed while the round closed)",
                                       state.gen, options_.slot));
      }
      round = Round{};
    }
    if (!round.entered) {
      if (member_of && (state.gen != static_cast<int64_t>(*member_of) || !in_members)) {
        throw LeftOutError(options_.slot,
                           fmt::format("etcd rendezvous of job '{}'", options_.job_id),
                           fmt::format("slot {} is a member of generation {}, but the group went "
                                       "on to generation {} without it",
                                       options_.slot, *member_of, state.gen));
      }
      State next = state;
      std::erase_if(next.round, [&](const State::Entry& e) { return e.slot == options_.slot; });
      next.round.push_back({options_.slot, member_of.has_value(), suspects});
      if (swap_state(text, next, deadline)) round = Round{true, state.gen, std::nullopt};
      continue;
    }
    if (try_close(state, text, round, deadline)) continue;
    std::this_thread::sleep_for(std::min(deadline.remaining(), options_.poll_interval));
  }
  throw TimeoutError(
      -1, fmt::format("etcd rendezvous of job '{}' at {}", options_.job_id, options_.endpoint),
      since(t0),
      fmt::format("generation {} to form (min {} workers; joined: {}; members of generation {}: "
                  "{})",
                  state.gen + 1, options_.min_workers, state.round.size(), state.gen,
                  state.members));
}

std::vector<PeerEndpoint> EtcdElasticRendezvous::exchange_endpoints(uint32_t generation,
                                                                    const PeerEndpoint& self,
                                                                    Deadline deadline) {
  const auto t0 = Clock::now();
  const std::string prefix = key(fmt::format("gen/{}/endpoint/", generation));
  const Json mine{{"host", self.host}, {"tcp", self.tcp_endpoint}, {"ipc", self.ipc_endpoint}};
  with_retry("this member's endpoint", deadline, [&](Deadline d) {
    return etcd_.put(prefix + std::to_string(self.rank), mine.dump(), lease_, d);
  });
  size_t have = 0;
  while (!deadline.expired()) {
    const State state = read_state(deadline).first;
    const auto lost = [&](const std::string& why) {
      return CommError(-1, fmt::format("etcd rendezvous of job '{}'", options_.job_id),
                       fmt::format("generation {} failed while forming: {}", generation, why));
    };
    if (state.gen != static_cast<int64_t>(generation)) {
      throw lost(fmt::format("generation {} superseded it", state.gen));
    }
    for (const State::Entry& e : state.round) {
      if (e.member) throw lost(fmt::format("slot {} gave up on it", e.slot));
    }
    const auto kvs = with_retry("the endpoints", deadline,
                                [&](Deadline d) { return etcd_.range_prefix(prefix, d); });
    have = kvs.size();
    if (have == state.members.size()) {
      std::vector<PeerEndpoint> table(have);
      for (const EtcdKeyValue& kv : kvs) {
        const size_t rank = std::stoul(kv.key.substr(prefix.size()));
        DTRAIN_CHECK(rank < have, "endpoint rank out of range", kv.key);
        const Json j = Json::parse(kv.value, nullptr, false);
        if (j.is_discarded() || !j.contains("tcp")) {
          throw DataError(fmt::format("etcd rendezvous: endpoint '{}' is '{}', not dtrain's",
                                      kv.key, kv.value.substr(0, 200)));
        }
        table[rank] = PeerEndpoint{static_cast<int>(rank), j.value("host", ""), j.value("tcp", ""),
                                   j.value("ipc", "")};
      }
      return table;
    }
    const std::vector<int> alive = alive_slots(deadline);
    for (size_t r = 0; r < state.members.size(); ++r) {
      if (!contains(alive, state.members[r])) {
        throw lost(fmt::format("slot {} (rank {}) lost its lease", state.members[r], r));
      }
    }
    std::this_thread::sleep_for(std::min(deadline.remaining(), options_.poll_interval));
  }
  throw TimeoutError(
      -1, fmt::format("etcd rendezvous of job '{}' at {}", options_.job_id, options_.endpoint),
      since(t0), fmt::format("the endpoints of generation {} ({} in)", generation, have));
}

uint32_t EtcdElasticRendezvous::poll() {
  poll_wanted_ = true;
  return waiting_;
}

std::optional<EtcdElasticRendezvous::GroupChange> EtcdElasticRendezvous::watch(uint32_t generation,
                                                                               bool admit_new,
                                                                               Deadline deadline) {
  const State state = read_state(deadline).first;
  if (state.finished) return std::nullopt;
  if (state.gen != static_cast<int64_t>(generation)) {
    return GroupChange{fmt::format("generation {} formed after {}", state.gen, generation), {}};
  }
  GroupChange change;
  const std::vector<int> alive = alive_slots(deadline);
  for (int m : state.members) {
    if (!contains(alive, m)) change.lost.push_back(m);
  }
  if (!change.lost.empty()) {
    change.why = fmt::format("the lease of slot(s) {} lapsed (silent past {} s)", change.lost,
                             options_.lease_ttl.count());
    return change;
  }
  // Before "a member left": the members that saw new participants first
  // join the next round for them, and the others must read it the same way.
  const uint32_t waiting = state.new_workers();
  if (admit_new && waiting > 0 && static_cast<int>(state.members.size()) < options_.max_workers) {
    return GroupChange{fmt::format("{} new participant(s) wait to join", waiting), {}, true};
  }
  for (const State::Entry& e : state.round) {
    if (e.member) {
      return GroupChange{fmt::format("slot {} left generation {}", e.slot, generation), {}};
    }
  }
  return std::nullopt;
}

void EtcdElasticRendezvous::finish(Deadline deadline) {
  while (true) {
    auto [state, text] = read_state(deadline);
    if (state.finished) return;
    state.finished = true;
    if (swap_state(text, state, deadline)) return;
  }
}

void EtcdElasticRendezvous::stop_keepalive() { keepalive_ = false; }

void EtcdElasticRendezvous::renew(std::stop_token stop) {
  std::mutex mutex;
  std::condition_variable_any wake;
  const auto renew_every =
      std::chrono::duration_cast<std::chrono::milliseconds>(options_.lease_ttl) / 3;
  auto renewed = Clock::now();
  EtcdLeaseWatch watch(std::chrono::duration_cast<std::chrono::milliseconds>(options_.lease_ttl));
  std::unique_lock lock(mutex);
  while (!stop.stop_requested()) {
    // Each call may take up to TTL/2: on a loaded machine a slow reply
    // does not cost the lease.
    const auto call = Deadline::after(
        std::min(options_.call_timeout,
                 std::chrono::duration_cast<std::chrono::milliseconds>(options_.lease_ttl) / 2));
    try {
      if (keepalive_ && !lease_lost_ && since(renewed) >= renew_every) {
        renewed = Clock::now();
        watch.attempted();
        if (etcd_.lease_keepalive(lease_, call) != 0) {
          watch.renewed();
        } else if (!watch.lost_to_outage()) {
          lease_lost_ = true;
        } else {
          logger_.warn(
              "etcd rendezvous '{}', slot {}: etcd was unreachable past the lease TTL "
              "({} s) and expired the lease; taking a new one",
              options_.job_id, options_.slot, options_.lease_ttl.count());
          take_lease(Deadline::after(options_.call_timeout));
        }
      }
      if (poll_wanted_.exchange(false)) {
        const std::optional<EtcdKeyValue> kv = etcd_.get(key("state"), call);
        waiting_ = kv ? State::parse(kv->value, key("state")).new_workers() : 0;
      }
    } catch (const Error& e) {
      watch.failed();
      logger_.warn("etcd rendezvous '{}', slot {}: {}", options_.job_id, options_.slot, e.what());
    }
    wake.wait_for(lock, stop, std::min(renew_every, std::chrono::milliseconds(200)),
                  [] { return false; });
  }
}

}  // namespace dtrain::comm
