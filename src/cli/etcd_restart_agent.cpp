#include "cli/etcd_restart_agent.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>

#include "cli/test_hooks.h"
#include "comm/rendezvous/elastic_group_rendezvous.h"
#include "comm/rendezvous/etcd_rendezvous.h"
#include "comm/rendezvous/host_address.h"
#include "comm/rendezvous/launch_env.h"
#include "core/error.h"

namespace dtrain::cli {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto kWatchInterval = 200ms;
constexpr auto kCheckTimeout = 2s;  // one renewal of the agent's lease
constexpr int kOutputLockWaitS = 60;

int env_int(const std::map<std::string, std::string>& env, const std::string& name, int fallback) {
  const auto it = env.find(name);
  if (it == env.end() || it->second.empty()) return fallback;
  try {
    size_t used = 0;
    const int value = std::stoi(it->second, &used);
    if (used == it->second.size() && value > 0) return value;
  } catch (const std::exception&) {
  }
  throw UsageError(fmt::format("{}='{}' must be a positive integer", name, it->second));
}

Deadline earlier(Deadline a, Deadline b) { return Deadline(std::min(a.at(), b.at())); }

// The group's change since generation `gen`, read once; nullopt when there
// is none or etcd cannot be read (a warning).
std::optional<comm::EtcdElasticRendezvous::GroupChange> look(comm::EtcdElasticRendezvous& rdzv,
                                                             uint32_t gen, bool admit_new,
                                                             Logger& logger) {
  try {
    return rdzv.watch(gen, admit_new, Deadline::after(kCheckTimeout));
  } catch (const Error& e) {
    logger.warn("agent: cannot read the group in etcd: {}", e.what());
    return std::nullopt;
  }
}

// The local workers' pids, for the watcher thread to stop them: recorded by
// the Launcher's callbacks on run()'s thread, read under the mutex.
class LocalWorkers {
 public:
  void started(pid_t pid) {
    std::lock_guard lock(mutex_);
    pids_.push_back(pid);
  }
  void ended(pid_t pid) {
    std::lock_guard lock(mutex_);
    std::erase(pids_, pid);
  }
  // Each worker leads its process group: the signal reaches what it started.
  void signal_all(int sig) {
    std::lock_guard lock(mutex_);
    for (pid_t pid : pids_) {
      ::kill(-pid, SIGCONT);
      ::kill(-pid, sig);
    }
  }

 private:
  std::mutex mutex_;
  std::vector<pid_t> pids_;
};

// Watches generation `gen` in etcd while the local workers run; on a change,
// or when `presence` says this agent's own lease lapsed, it records why and
// stops them (SIGTERM, then SIGKILL after `grace`; the Launcher stops the
// rest once the first one exits).
class GroupWatcher {
 public:
  // `blind` (a test hook): never read the group, only this agent's lease.
  GroupWatcher(comm::EtcdElasticRendezvous& rdzv, uint32_t gen, bool admit_new, bool blind,
               std::chrono::milliseconds grace, LocalWorkers& workers,
               const AgentPresence& presence, Logger& logger)
      : thread_([&, gen, admit_new, blind, grace](std::stop_token stop) {
          watch(stop, rdzv, gen, admit_new, blind, grace, workers, presence, logger);
        }) {}

  // Stops watching (joins the thread); then the change seen, if any.
  std::optional<comm::EtcdElasticRendezvous::GroupChange> finish() {
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
    return change_;
  }

 private:
  void watch(std::stop_token stop, comm::EtcdElasticRendezvous& rdzv, uint32_t gen, bool admit_new,
             bool blind, std::chrono::milliseconds grace, LocalWorkers& workers,
             const AgentPresence& presence, Logger& logger) {
    std::mutex mutex;
    std::condition_variable_any wake;
    std::unique_lock lock(mutex);
    const auto pause = [&](std::chrono::milliseconds d) {
      wake.wait_for(lock, stop, d, [] { return false; });
    };
    bool stale = false;
    while (!stop.stop_requested() && !change_) {
      stale = presence.lost();
      if (stale) break;
      if (!blind) change_ = look(rdzv, gen, admit_new, logger);
      if (!change_) pause(kWatchInterval);
    }
    if (!change_ && !stale) return;
    if (change_) {
      logger.warn("agent: {}; stopping the local workers to restart the group", change_->why);
    }
    workers.signal_all(SIGTERM);
    pause(grace);
    if (!stop.stop_requested()) workers.signal_all(SIGKILL);
  }

  std::optional<comm::EtcdElasticRendezvous::GroupChange> change_;
  std::jthread thread_;  // last: started once the members above exist
};

// This agent's place in one generation.
struct Placement {
  comm::ElasticGeneration gen;
  std::string coordinator_host;
  int coordinator_port = 0;
};

// Where rank 0's worker on this host hosts the coordinator: the address the
// other hosts use (DTRAIN_ADVERTISE_HOST, else DTRAIN_LISTEN_HOST unless a
// wildcard, else the launcher's coordinator_host) and the one a free port is
// looked for on.
struct AgentAddress {
  std::string advertise;
  std::string bind;
};

AgentAddress agent_address(const LaunchOptions& base) {
  const comm::LaunchSettings s = comm::resolve_launch_settings(base.environment);
  const bool wildcard = comm::is_wildcard_host(s.listen_host);
  AgentAddress a;
  a.advertise = !s.advertise_host.empty() ? s.advertise_host
                : wildcard                ? base.coordinator_host
                                          : s.listen_host;
  a.bind = wildcard || !s.advertise_host.empty() ? "0.0.0.0" : a.advertise;
  return a;
}

// Joins the next generation; nullopt when the job finished without this agent.
std::optional<comm::ElasticGeneration> join(comm::EtcdElasticRendezvous& rdzv,
                                            std::optional<uint32_t>& member_of,
                                            const std::vector<int>& lost, Deadline deadline,
                                            Logger& logger) {
  try {
    return rdzv.join(member_of, deadline, lost);
  } catch (const comm::LeftOutError& e) {
    logger.warn("agent: {}; joining again as a new node", e.what());
    member_of.reset();
    return rdzv.join(std::nullopt, deadline);
  }
}

// "host:port" as a Placement's coordinator.
void parse_coordinator(const std::string& text, uint32_t gen, Placement& p) {
  const size_t colon = text.rfind(':');
  try {
    p.coordinator_host = text.substr(0, colon);
    p.coordinator_port = std::stoi(text.substr(colon + 1));
  } catch (const std::exception&) {
    throw DataError(fmt::format(
        "etcd: node rank 0's coordinator '{}' of generation {} is not host:port", text, gen));
  }
}

// Joins the next generation and reads rank 0's coordinator address from it;
// a generation that fails while forming (a node died meanwhile) is joined
// again. nullopt: the job finished without this agent.
std::optional<Placement> meet(comm::EtcdElasticRendezvous& rdzv, std::optional<uint32_t>& member_of,
                              std::vector<int> lost, const AgentAddress& host, Deadline deadline,
                              Logger& logger) {
  while (true) {
    const std::optional<comm::ElasticGeneration> gen =
        join(rdzv, member_of, lost, deadline, logger);
    if (!gen) return std::nullopt;
    Placement p{*gen, host.advertise, 0};
    comm::PeerEndpoint self{gen->rank, host.advertise, "", ""};
    if (gen->rank == 0) {
      self.tcp_endpoint = fmt::format("{}:{}", host.advertise, pick_free_port(host.bind));
    }
    try {
      const std::vector<comm::PeerEndpoint> table =
          rdzv.exchange_endpoints(gen->generation, self, deadline);
      parse_coordinator(table.at(0).tcp_endpoint, gen->generation, p);
      return p;
    } catch (const TimeoutError&) {
      throw;
    } catch (const comm::LeftOutError&) {
      throw;
    } catch (const CommError& e) {
      logger.warn("agent: {}; joining again", e.what());
      member_of = gen->generation;
      lost.clear();
    }
  }
}

// What one generation's run ended with.
struct RunOutcome {
  LaunchResult result;
  std::optional<comm::EtcdElasticRendezvous::GroupChange> change;
};

RunOutcome run_generation(comm::EtcdElasticRendezvous& rdzv, const Placement& p, bool admit_new,
                          LaunchOptions options, std::ostream& out, std::ostream& err,
                          const AgentPresence& presence, Logger& logger, Deadline deadline) {
  const int k = options.workers;
  options.first_rank = p.gen.rank * k;
  options.world_size = p.gen.world_size() * k;
  options.coordinator_host = p.coordinator_host;
  options.coordinator_port = p.coordinator_port;
  LocalWorkers workers;
  options.on_process_started = [&workers](int, pid_t pid) { workers.started(pid); };
  options.on_process_exited = [&workers](const WorkerExit& e) { workers.ended(e.pid); };
  const bool blind = test_agent_blind(options.environment);
  GroupWatcher watcher(rdzv, p.gen.generation, admit_new, blind, options.stop_grace, workers,
                       presence, logger);
  RunOutcome outcome;
  try {
    outcome.result = Launcher(std::move(options), out, err, logger).run(deadline);
  } catch (...) {
    watcher.finish();
    throw;
  }
  outcome.change = watcher.finish();
  const LaunchResult& r = outcome.result;
  if (!outcome.change && r.interrupted_by == 0 && (r.exit_code != 0 || r.first_failed_rank)) {
    // One more read: the workers may have failed because another host's
    // were stopped for a change this watcher had not read yet (an admission
    // above all, which must cost no agent a restart, not only the ones whose
    // watcher was quicker). Until the next generation forms, the change is
    // there to read: the round waits for every live member up to the settle
    // time.
    outcome.change = look(rdzv, p.gen.generation, admit_new, logger);
  }
  return outcome;
}

// Tells the other agents that training finished (they then take this
// agent's exit for no failure); an unreachable etcd only costs a warning.
void mark_finished(comm::EtcdElasticRendezvous& rdzv, Deadline deadline, Logger& logger) {
  try {
    rdzv.finish(earlier(deadline, Deadline::after(30s)));
  } catch (const Error& e) {
    logger.warn("agent: could not mark the job finished in etcd: {}", e.what());
  }
}

}  // namespace

std::vector<std::string> worker_argv(const std::vector<std::string>& argv) {
  std::vector<std::string> kept;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    bool ours = false;
    for (const char* flag : {"--rdzv", "--nnodes", "--nproc-per-node"}) {
      if (a == flag) {
        ours = true;
        ++i;  // its value
      } else if (a.starts_with(std::string(flag) + "=")) {
        ours = true;
      }
    }
    if (!ours) kept.push_back(a);
  }
  return kept;
}

LaunchResult run_etcd_restart_agent(const AgentOptions& agent, AgentPresence& presence,
                                    int min_nodes, int max_nodes, LaunchOptions base,
                                    std::ostream& out, std::ostream& err, Logger& logger,
                                    Deadline deadline) {
  const int node = presence.node();
  const comm::RdzvUrl url = comm::parse_rdzv_url(agent.rdzv, "--rdzv");
  comm::EtcdRendezvousOptions r;
  r.endpoint = url.endpoint;
  r.job_id = url.job_id;
  r.slot = node;
  r.min_workers = min_nodes;
  r.max_workers = max_nodes;
  r.lease_ttl = std::chrono::seconds(env_int(base.environment, "DTRAIN_RDZV_LEASE_TTL_S", 10));
  r.settle = std::chrono::milliseconds(env_int(base.environment, "DTRAIN_RDZV_SETTLE_MS", 5000));
  const auto join_timeout =
      std::chrono::seconds(env_int(base.environment, "DTRAIN_RDZV_JOIN_TIMEOUT_S", 600));
  base.workers = agent.nproc_per_node;
  base.argv = worker_argv(base.argv);
  base.environment.erase("DTRAIN_RDZV");
  // A new rank 0 may find the lock still held by the old one, on a host
  // frozen past its lease: it waits while that host's agent, once it runs
  // again, finds itself left out and stops its workers.
  base.environment.try_emplace("DTRAIN_OUTPUT_LOCK_WAIT_S", std::to_string(kOutputLockWaitS));
  const AgentAddress address = agent_address(base);
  comm::EtcdElasticRendezvous rdzv(r, logger);
  logger.info(
      "agent: node {} of job '{}' at etcd {}, restart mode; {} local worker(s); {}..{} node(s); "
      "up to {} restart(s)",
      node, url.job_id, url.endpoint, agent.nproc_per_node, min_nodes, max_nodes,
      agent.max_restarts);
  std::optional<uint32_t> member_of;
  std::vector<int> lost;
  int restarts = 0;
  while (true) {
    const std::optional<Placement> p = meet(
        rdzv, member_of, lost, address, earlier(deadline, Deadline::after(join_timeout)), logger);
    if (!p) {
      logger.info("agent: node {}: the job finished without this node", node);
      return LaunchResult{};
    }
    if (presence.check(Deadline::after(kCheckTimeout))) {
      LaunchResult stale;
      stale.exit_code = 1;  // the caller says why
      return stale;
    }
    logger.info(
        "agent: node {} is node rank {} of generation {} (nodes {}): worker ranks {}..{} of {}, "
        "coordinator {}:{}",
        node, p->gen.rank, p->gen.generation, p->gen.slots, p->gen.rank * base.workers,
        p->gen.rank * base.workers + base.workers - 1, p->gen.world_size() * base.workers,
        p->coordinator_host, p->coordinator_port);
    const bool admit_new = p->gen.world_size() < max_nodes;
    RunOutcome o = run_generation(rdzv, *p, admit_new, base, out, err, presence, logger, deadline);
    if (presence.check(Deadline::after(kCheckTimeout))) {
      o.result.exit_code = 1;  // the caller says why
      return o.result;
    }
    const bool ok = !o.change && o.result.exit_code == 0 && !o.result.first_failed_rank;
    if (ok || o.result.interrupted_by != 0) {
      if (ok) mark_finished(rdzv, deadline, logger);
      return o.result;
    }
    const bool admission = o.change && o.change->admission;
    const std::string why = o.change ? o.change->why : o.result.failure;
    if (!admission && restarts == agent.max_restarts) {
      logger.error("agent: node {}: restart budget exhausted ({} of {} used); last failure: {}",
                   node, restarts, agent.max_restarts, why);
      if (o.result.exit_code == 0) o.result.exit_code = 1;
      return o.result;
    }
    if (!admission) ++restarts;
    logger.warn("agent: node {}: {}; restarting the group from its newest checkpoint ({})", node,
                why,
                admission ? "no restart used"
                          : fmt::format("restart {} of {}", restarts, agent.max_restarts));
    member_of = p->gen.generation;
    lost = o.change ? o.change->lost : std::vector<int>{};
  }
}

}  // namespace dtrain::cli
