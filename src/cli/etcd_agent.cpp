#include "cli/etcd_agent.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "cli/etcd_agent_presence.h"
#include "cli/etcd_restart_agent.h"
#include "cli/private_dir.h"
#include "cli/test_hooks.h"
#include "comm/rendezvous/launch_env.h"
#include "core/error.h"

namespace dtrain::cli {

namespace {

constexpr auto kClaimTimeout = std::chrono::seconds(30);

struct NodeBounds {
  int min = 1;
  int max = 1;
};

NodeBounds parse_nnodes(const std::string& text) {
  const size_t colon = text.find(':');
  NodeBounds b;
  try {
    size_t used = 0;
    b.min = std::stoi(text.substr(0, colon), &used);
    if (used != (colon == std::string::npos ? text.size() : colon)) throw std::invalid_argument("");
    b.max = b.min;
    if (colon != std::string::npos) {
      b.max = std::stoi(text.substr(colon + 1), &used);
      if (used != text.size() - colon - 1) throw std::invalid_argument("");
    }
  } catch (const std::exception&) {
    throw UsageError(fmt::format("--nnodes '{}' is not MIN:MAX or N", text));
  }
  if (b.min < 1 || b.max < b.min) {
    throw UsageError(fmt::format("--nnodes '{}': need 1 <= MIN <= MAX", text));
  }
  return b;
}

// Stops the agent's workers when its lease is found lost (AgentPresence's
// thread): SIGTERM to itself, which the launcher forwards to them, but only
// while the launcher runs (it catches SIGTERM then).
struct StaleStop {
  std::mutex mutex;
  bool launcher_running = false;
  void stop() {
    const std::lock_guard lock(mutex);
    if (launcher_running) ::kill(getpid(), SIGTERM);
  }
  void set_running(bool running) {
    const std::lock_guard lock(mutex);
    launcher_running = running;
  }
};

// The node bounds; UsageError for bad options or no job secret.
NodeBounds check_options(const AgentOptions& agent, LaunchOptions& base) {
  const NodeBounds nodes = parse_nnodes(agent.nnodes);
  const int k = agent.nproc_per_node;
  if (k < 1 || static_cast<int64_t>(nodes.max) * k > comm::kMaxWorldSize) {
    throw UsageError(
        fmt::format("--nproc-per-node {} must be in 1..{} / MAX nodes", k, comm::kMaxWorldSize));
  }
  if (base.environment["DTRAIN_JOB_SECRET"].empty() &&
      base.environment["DTRAIN_KEY_FILE"].empty()) {
    throw UsageError(
        "--rdzv: set DTRAIN_JOB_SECRET, or a key file (DTRAIN_KEY_FILE, security.key_file), the "
        "same on every host (the workers of different hosts authenticate each other with it)");
  }
  if (agent.lease_ttl.count() < 1) {
    throw UsageError(fmt::format("--rdzv-ttl {} s: the lease TTL must be at least 1 s",
                                 agent.lease_ttl.count()));
  }
  return nodes;
}

std::string host_address_of(const AgentOptions& agent, const LaunchOptions& base) {
  if (!agent.host_address.empty()) return agent.host_address;
  const auto it = base.environment.find("DTRAIN_HOST_ADDRESS");
  if (it != base.environment.end() && !it->second.empty()) return it->second;
  return "127.0.0.1";
}

// Elastic mode's launcher options: K local workers that form their
// generations in etcd themselves (the header's contract).
void set_elastic(const AgentOptions& agent, const NodeBounds& nodes, int node,
                 const std::string& host, LaunchOptions& base) {
  const int k = agent.nproc_per_node;
  base.workers = k;
  base.coordinator = false;
  base.environment["DTRAIN_LISTEN_HOST"] = host;
  base.environment["DTRAIN_ADVERTISE_HOST"] = host;
  base.environment["DTRAIN_RDZV_LEASE_TTL"] = std::to_string(agent.lease_ttl.count());
  base.environment["DTRAIN_RDZV"] = agent.rdzv;
  base.environment["DTRAIN_RDZV_MIN_WORKERS"] = std::to_string(nodes.min * k);
  base.environment["DTRAIN_RDZV_MAX_WORKERS"] = std::to_string(nodes.max * k);
  base.environment["DTRAIN_RDZV_SLOT_BASE"] = std::to_string(node * k);
  LaunchOptions::Elastic e;
  e.min_workers = 1;
  e.max_restarts = agent.max_restarts;
  e.slot_name = [node, k](int slot) {
    return fmt::format("worker slot {} (node {})", node * k + slot, node);
  };
  // Training is over once a local worker finished it; the agent then waits
  // for its other workers (they finish too, or are released).
  struct Tally {
    bool finished = false;
    int running = 0;
  };
  auto tally = std::make_shared<Tally>();
  e.on_worker_starting = [tally](int) { ++tally->running; };
  e.on_worker_ended = [tally](const WorkerExit& exit, int running) {
    if (exit.ok()) tally->finished = true;
    tally->running = running;
  };
  e.job_finished = [tally] { return tally->finished && tally->running == 0; };
  base.elastic = std::move(e);
}

}  // namespace

LaunchResult run_etcd_agent(const AgentOptions& agent, LaunchOptions base, std::ostream& out,
                            std::ostream& err, Logger& logger, Deadline deadline) {
  const comm::RdzvUrl url = comm::parse_rdzv_url(agent.rdzv, "--rdzv");
  const NodeBounds nodes = check_options(agent, base);
  const int k = agent.nproc_per_node;
  const std::string host = host_address_of(agent, base);
  const std::string stale = fmt::format(
      "agent of job '{}' was silent past its lease TTL ({} s): the group went on without this "
      "host; it is left out (LeftOut) and stops its workers",
      url.job_id, agent.lease_ttl.count());
  test_stop_before_claim(base.environment, logger);
  // The workers' ipc sockets bind in a folder of the agent's own, removed
  // when it returns, so that a killed worker leaves none behind. Not
  // DTRAIN_RUN_DIR: that also means "one host, fixed endpoints".
  const auto tmpdir = base.environment.find("TMPDIR");
  const PrivateDir sockets(tmpdir == base.environment.end() ? "" : tmpdir->second, "dtrain-ipc",
                           "the agent's socket folder");
  base.environment["DTRAIN_SOCKET_DIR"] = sockets.path();
  // Declared before `presence`, whose thread calls it: outlives that thread.
  StaleStop stale_stop;
  AgentPresence presence(
      url, host, agent.lease_ttl,
      [&logger, &stale_stop, stale] {
        logger.error("{}", stale);
        stale_stop.stop();
      },
      logger, Deadline(std::min(deadline.at(), Deadline::after(kClaimTimeout).at())));
  const int node = presence.node();
  if (!agent.restart) {
    set_elastic(agent, nodes, node, host, base);
    logger.info(
        "agent: node {} of job '{}' at etcd {}, host address {}; {} local worker(s), slots "
        "{}..{}; group of {}..{} worker(s); lease TTL {} s",
        node, url.job_id, url.endpoint, host, k, node * k, node * k + k - 1, nodes.min * k,
        nodes.max * k, agent.lease_ttl.count());
  }
  LaunchResult result;
  if (agent.restart) {
    // Its watcher stops the workers when presence finds the lease lost.
    result = run_etcd_restart_agent(agent, presence, nodes.min, nodes.max, std::move(base), out,
                                    err, logger, deadline);
  } else {
    stale_stop.set_running(true);
    try {
      result = Launcher(std::move(base), out, err, logger).run(deadline);
    } catch (...) {
      stale_stop.set_running(false);
      throw;
    }
    stale_stop.set_running(false);
  }
  if (presence.check(Deadline::after(std::chrono::seconds(2)))) {
    result.exit_code = 1;
    result.failure = stale;
    logger.error("agent: node {}: exiting with code 1: {}", node, stale);
  }
  // Agents that finish together leave together; one SIGKILLed moments
  // before keeps its alive key up to the TTL.
  presence.leave(result.exit_code == 0 ? agent.lease_ttl + std::chrono::seconds(1)
                                       : std::chrono::milliseconds(0));
  return result;
}

}  // namespace dtrain::cli
