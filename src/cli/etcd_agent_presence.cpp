#include "cli/etcd_agent_presence.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <utility>

#include "core/error.h"

namespace dtrain::cli {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kCallTimeout{2000};

// Runs `call` with a per-call deadline of kCallTimeout, retrying failed
// calls until `deadline`; then TimeoutError naming etcd and `what`.
template <typename Call>
auto with_retry(const comm::EtcdClient& etcd, const std::string& what, Deadline deadline,
                Call call) {
  const auto t0 = Clock::now();
  std::string last = "the deadline had passed before the first call";
  while (!deadline.expired()) {
    try {
      return call(Deadline::after(std::min(deadline.remaining(), kCallTimeout)));
    } catch (const CommError& e) {
      last = e.what();
    }
    std::this_thread::sleep_for(std::min(deadline.remaining(), milliseconds(200)));
  }
  throw TimeoutError(-1, fmt::format("etcd at {}", etcd.endpoint()),
                     std::chrono::duration_cast<milliseconds>(Clock::now() - t0),
                     fmt::format("{} (last error: {})", what, last));
}

}  // namespace

AgentPresence::AgentPresence(const comm::RdzvUrl& url, const std::string& host_address,
                             std::chrono::seconds ttl, std::function<void()> on_lost,
                             Logger& logger, Deadline deadline)
    : etcd_(url.endpoint),
      prefix_(fmt::format("/dtrain/{}/", url.job_id)),
      ttl_(ttl),
      me_(fmt::format("{} pid {}", host_address, getpid())),
      logger_(logger),
      watch_(std::chrono::duration_cast<milliseconds>(ttl)),
      on_lost_(std::move(on_lost)) {
  for (int index = 0; node_ < 0; ++index) {
    const std::string key = fmt::format("{}nodes/{}", prefix_, index);
    if (with_retry(etcd_, "a node index", deadline, [&](Deadline d) {
          return etcd_.compare_and_swap(key, std::nullopt, me_, 0, d);
        })) {
      node_ = index;
    }
  }
  with_retry(etcd_, "the agent's lease and alive key", deadline, [&](Deadline d) {
    put_alive(d);
    return 0;
  });
  thread_ = std::jthread([this](std::stop_token stop) { renew(stop); });
}

AgentPresence::~AgentPresence() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void AgentPresence::mark_lost() {
  lost_ = true;
  if (!told_.exchange(true) && on_lost_) on_lost_();
}

bool AgentPresence::check(Deadline deadline) {
  const std::lock_guard lock(check_mutex_);
  if (lost_) return true;
  watch_.attempted();
  try {
    if (etcd_.lease_keepalive(lease_, deadline) != 0) {
      watch_.renewed();
    } else if (!watch_.lost_to_outage()) {
      mark_lost();
    } else {
      logger_.warn(
          "agent: node {}: etcd was unreachable past the lease TTL ({} s) and expired "
          "the lease; taking a new one",
          node_, ttl_.count());
      put_alive(deadline);
    }
  } catch (const Error& e) {
    watch_.failed();
    logger_.warn("agent: node {}: cannot renew its lease in etcd: {}", node_, e.what());
  }
  return lost_;
}

void AgentPresence::put_alive(Deadline deadline) {
  lease_ = etcd_.lease_grant(ttl_.count(), deadline);
  etcd_.put(fmt::format("{}agents/{}", prefix_, node_), me_, lease_, deadline);
}

void AgentPresence::renew(std::stop_token stop) {
  std::mutex mutex;
  std::condition_variable_any wake;
  // A renewal every TTL/4, each allowed TTL/2: on a loaded machine a slow
  // call does not cost the lease.
  const auto ttl = std::chrono::duration_cast<milliseconds>(ttl_);
  std::unique_lock lock(mutex);
  while (!stop.stop_requested() && !lost_) {
    const auto next = Clock::now() + ttl / 4;
    check(Deadline::after(std::min(ttl / 2, kCallTimeout)));
    wake.wait_until(lock, stop, next, [] { return false; });
  }
}

void AgentPresence::leave(milliseconds wait_for_others) {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
  try {
    if (!lost_) etcd_.lease_revoke(lease_, Deadline::after(kCallTimeout));
    const Deadline others_gone = Deadline::after(wait_for_others);
    for (;;) {
      const auto alive = etcd_.range_prefix(prefix_ + "agents/", Deadline::after(kCallTimeout));
      if (alive.empty()) break;
      if (others_gone.expired()) {
        logger_.info(
            "agent: node {}: {} other agent(s) of the job still alive; the last one "
            "to leave removes the job's keys from etcd",
            node_, alive.size());
        return;
      }
      std::this_thread::sleep_for(std::min(others_gone.remaining(), milliseconds(200)));
    }
    const int64_t removed = etcd_.erase_prefix(prefix_, Deadline::after(kCallTimeout));
    logger_.info(
        "agent: node {}: the last agent of the job to leave; removed its {} key(s) "
        "from etcd ({}*): the job id may be used again",
        node_, removed, prefix_);
  } catch (const Error& e) {
    logger_.warn("agent: node {}: could not clean up the job's keys in etcd ({}*): {}", node_,
                 prefix_, e.what());
  }
}

}  // namespace dtrain::cli
