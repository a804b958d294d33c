#include "cli/etcd_agent.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <utility>

#include "cli/etcd_restart_agent.h"
#include "comm/rendezvous/etcd_client.h"
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

// The lowest node index no agent of the job claimed yet, claimed for this one.
int claim_node_index(const comm::RdzvUrl& url, Deadline deadline) {
  comm::EtcdClient etcd(url.endpoint);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::string me = fmt::format("{} pid {}", host, getpid());
  const std::string prefix = fmt::format("/dtrain/{}/nodes/", url.job_id);
  for (int index = 0;; ++index) {
    if (etcd.compare_and_swap(prefix + std::to_string(index), std::nullopt, me, 0, deadline)) {
      return index;
    }
  }
}

}  // namespace

LaunchResult run_etcd_agent(const AgentOptions& agent, LaunchOptions base, std::ostream& out,
                            std::ostream& err, Logger& logger, Deadline deadline) {
  const comm::RdzvUrl url = comm::parse_rdzv_url(agent.rdzv, "--rdzv");
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
  const int node =
      claim_node_index(url, Deadline(std::min(deadline.at(), Deadline::after(kClaimTimeout).at())));
  if (agent.restart) {
    return run_etcd_restart_agent(agent, node, nodes.min, nodes.max, std::move(base), out, err,
                                  logger, deadline);
  }
  base.workers = k;
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
  logger.info(
      "agent: node {} of job '{}' at etcd {}; {} local worker(s), slots {}..{}; group of "
      "{}..{} worker(s)",
      node, url.job_id, url.endpoint, k, node * k, node * k + k - 1, nodes.min * k, nodes.max * k);
  return Launcher(std::move(base), out, err, logger).run(deadline);
}

}  // namespace dtrain::cli
