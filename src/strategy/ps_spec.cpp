// The `ps` strategy's registry entry: [distributed.ps] options, its checks,
// its processes (S servers then N workers) and what each of them runs: a
// ps::Server, or a worker's PsStrategy over a ps::Client.
//
// Finding the servers (docs/parameter-server.md, docs/launching.md):
//  - fixed endpoints (what dtrain's own launcher does, possible under any
//    launcher): DTRAIN_PS_ENDPOINTS="EP0,EP1,..." names server s's endpoint,
//    or, without it, a run folder (DTRAIN_RUN_DIR) holds "server-s" ipc
//    sockets (not with DTRAIN_TCP_ONLY=1). Server s binds its endpoint, the workers connect, and no
//    rendezvous takes place. Only then can a server be replaced: a process
//    started again for server s (DTRAIN_RESTART_COUNT > 0) binds the same
//    endpoint and restores its shard from the newest intact checkpoint of
//    this run in the job's output folder; the workers re-join it.
//  - otherwise the coordinator rendezvous (comm/rendezvous/rendezvous.h)
//    with world S + N: rank 0 (server 0) hosts it; each server registers the
//    endpoint it bound, workers register none and read the servers'.
//
// Co-located servers (distributed.ps.colocate = true, docs/parameter-server.md
// "Co-located servers"; strategy/ps_colocated.h): there are no server
// processes; worker i < S hosts server i on a thread and reaches it over
// inproc, the other servers at their fixed endpoints. A worker's death takes
// its server with it, so the job stops (worker i < S is essential) and
// nothing replaces it: train.max_restarts and replicas are refused with it,
// as are more servers than workers and the rendezvous (fixed endpoints only).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <stop_token>

#include "comm/rendezvous/coordinator_discovery.h"
#include "comm/rendezvous/host_address.h"
#include "comm/rendezvous/rendezvous.h"
#include "comm/wire/auth.h"
#include "core/error.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "ps/server.h"
#include "ps/state_layout.h"
#include "strategy/ps_colocated.h"
#include "strategy/ps_strategy.h"
#include "strategy/registry.h"

namespace dtrain::strategy {

namespace {

struct PsJobOptions {
  int64_t servers = 1;  // server processes, each holding a key range
  // "sync" (one update per step from every worker's gradient), "async" (each
  // push applied at once) or "ssp" (async, a worker at most `staleness`
  // versions ahead of the slowest).
  std::string consistency = "sync";
  int64_t staleness = 2;
  // sync: each version aggregates the first workers - backup_workers pushes.
  int64_t backup_workers = 0;
  // sync: each server's range is also held by the next `replicas` servers
  // (ps/replication.h); 0: none.
  int64_t replicas = 0;
  // With replicas: a dead server's range is taken over by its first live
  // backup at once (false: the workers wait for its replacement). Unset:
  // on where the ps links are private ipc (one host: a broken connection
  // means a dead process), off across hosts, where a network split could
  // leave two servers serving one range (docs/parameter-server.md).
  std::optional<bool> takeover;
  // Server i runs as a thread of worker process i (S <= N): N processes.
  bool colocate = false;
  // Each server's push leaves during backward, as soon as its range is
  // final (PsOptions::overlap; sync only).
  bool overlap = false;
  // On private-ipc links: dense push and pull floats through a shared-memory
  // segment per (worker, server) (ps::ClientOptions::shm).
  bool shm = true;
  // The next step's embedding rows ride with this step's pull
  // (PsOptions::prefetch_rows).
  bool prefetch_rows = true;
};

// The endpoint workers should connect to: the bound one, with the host
// replaced by the advertised host (or this machine's name when the server
// listens on every interface).
std::string advertised(const std::string& bound, const comm::LaunchSettings& settings) {
  std::string host = settings.advertise_host;
  if (host.empty() && comm::is_wildcard_host(settings.listen_host)) host = comm::this_host_name();
  if (host.empty()) return bound;
  const auto colon = bound.rfind(':');
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return "tcp://" + host + bound.substr(colon);
}

// Local SGD pushes a round's movement divided by lr; the servers' SGD turns
// it into theta -= lr * (that), the workers' mean movement, or, with
// momentum beta, SlowMo's outer momentum on it (docs/parameter-server.md
// "Local SGD"). Another optimizer type would rescale the movement per
// coordinate, so the job refuses it; the strategy checks the rest (sync, no
// embeddings).
void check_local_sgd(const CompressionSettings& compression, const std::string& consistency,
                     const optim::OptimizerConfig& optimizer) {
  if (!compression.local_sgd()) return;
  const std::string where = fmt::format("compression.local_steps = {}", compression.local_steps);
  if (consistency != "sync") {
    throw ConfigError(fmt::format(
        "{}: local SGD with the ps strategy needs distributed.ps.consistency 'sync', not '{}'",
        where, consistency));
  }
  if (optimizer.type != "sgd") {
    throw ConfigError(fmt::format(
        "{}: local SGD with the ps strategy needs optimizer.type 'sgd' on the servers (its "
        "momentum, if any, is SlowMo's outer momentum on the workers' mean movement), not '{}'",
        where, optimizer.type));
  }
}

class PsSpec final : public StrategySpec {
 public:
  std::string_view name() const override { return "ps"; }
  std::string_view summary() const override {
    return "parameter servers hold the weights and the optimizer; workers push gradients and "
           "pull weights (--servers S --workers N)";
  }

  void read_options(ConfigTable& table) override {
    table.read("servers", o_.servers);
    table.read("consistency", o_.consistency);
    table.read("staleness", o_.staleness);
    table.read("backup_workers", o_.backup_workers);
    table.read("replicas", o_.replicas);
    if (bool takeover = false; table.read("takeover", takeover)) o_.takeover = takeover;
    table.read("colocate", o_.colocate);
    table.read("overlap", o_.overlap);
    table.read("shm", o_.shm);
    table.read("prefetch_rows", o_.prefetch_rows);
    where_ = table.lines();
    if (o_.overlap && o_.consistency != "sync") {
      throw where_.error("overlap", fmt::format("pushes overlap backward in consistency 'sync' "
                                                "only, not '{}'",
                                                o_.consistency));
    }
    if (o_.replicas < 0 || (o_.replicas > 0 && o_.replicas >= o_.servers)) {
      throw where_.error("replicas", fmt::format("{} replicas with {} servers: must be in [0, {})",
                                                 o_.replicas, o_.servers, o_.servers));
    }
    if (o_.replicas > 0 && o_.consistency != "sync") {
      throw where_.error("replicas", fmt::format("replication is synchronous, per version: it "
                                                 "needs consistency 'sync', not '{}'",
                                                 o_.consistency));
    }
    if (o_.servers < 1) {
      throw where_.error("servers", fmt::format("must be at least 1, got {}", o_.servers));
    }
    check_choice(where_, "consistency", o_.consistency, {"sync", "async", "ssp"});
    if (o_.backup_workers > 0 && o_.consistency != "sync") {
      throw where_.error("backup_workers",
                         fmt::format("backup workers drop late pushes of a synchronous step; "
                                     "consistency '{}' has no step to drop them from",
                                     o_.consistency));
    }
  }

  void validate(const JobFacts& job, std::vector<std::string>& /*warnings*/) const override {
    refuse_elastic(job, name());
    if (o_.colocate) validate_colocated(job);
    if (!o_.colocate && job.launched && job.launched_world_size <= o_.servers) {
      throw where_.error("servers",
                         fmt::format("{} servers leave no worker in a job of {} "
                                     "processes ({}); start servers + workers "
                                     "processes",
                                     o_.servers, job.launched_world_size, job.launched_by));
    }
    const int64_t workers = worker_count(job);
    if (o_.backup_workers >= workers) {
      throw where_.error("backup_workers",
                         fmt::format("{} backup workers with {} workers: must be in [0, {})",
                                     o_.backup_workers, workers, workers));
    }
    if (job.dynamic_batch && o_.consistency != "sync") {
      throw job.where.error(
          "distributed.dynamic_batch",
          fmt::format("dynamic batch sizing with the ps strategy needs consistency 'sync', not "
                      "'{}': the workers' shares are computed from each version's "
                      "measurements, which only sync versions share",
                      o_.consistency));
    }
    if (job.dynamic_batch && o_.backup_workers > 0) {
      throw job.where.error(
          "distributed.dynamic_batch",
          fmt::format("dynamic batch sizing needs every worker in every version; with "
                      "backup_workers = {} a late worker would miss a version's measurements "
                      "and split the batch differently",
                      o_.backup_workers));
    }
    // A process started again in place of a failed one rejoins with fresh
    // runtime state: the shares of a dynamic batch and the position in its
    // own partition are not recovered yet.
    if (job.max_restarts > 0 && job.dynamic_batch) {
      throw job.where.error("train.max_restarts",
                            "restarting failed ps processes with dynamic batch sizing is not "
                            "supported yet: a restarted worker would split the batch "
                            "differently from the others");
    }
    if (job.max_restarts > 0 && job.partitioned) {
      throw job.where.error("train.max_restarts",
                            "restarting failed ps processes with data.partition is not supported "
                            "yet: a restarted worker would not know how far its partition was "
                            "trained");
    }
    const int64_t min_workers = job.min_workers > 0 ? job.min_workers : 1;
    if (min_workers > workers) {
      throw job.where.error(
          "train.min_workers",
          fmt::format("{} is more than the job's {} worker(s)", min_workers, workers));
    }
  }

  ProcessPlan plan(const JobFacts& job) const override {
    if (o_.colocate) return colocated_plan(job);
    ProcessPlan p;
    const auto servers = static_cast<int>(o_.servers);
    p.servers = servers;
    p.processes = static_cast<int>(o_.servers + worker_count(job));
    p.replace_failed = true;
    p.min_workers = static_cast<int>(job.min_workers > 0 ? job.min_workers : 1);
    p.essential_slots = servers + 1;  // the servers and worker 0, the chief
    // The rule build() applies in the started processes, whose links are
    // private ipc exactly when the launcher's facts say so.
    if (o_.takeover.value_or(job.launcher_private_ipc)) {
      p.takeover_replicas = static_cast<int>(o_.replicas);
    }
    p.slot_name = [servers](int slot) {
      return slot < servers ? fmt::format("ps server {}", slot)
                            : fmt::format("worker {}", slot - servers);
    };
    return p;
  }

  bool multi_process(const JobFacts& /*job*/) const override { return true; }
  int64_t workers(const JobFacts& job) const override { return worker_count(job); }

  ProcessRole role(const JobFacts& /*job*/, const comm::LaunchInfo& launch) const override {
    ProcessRole r;
    if (o_.colocate) {
      r.index = launch.rank;
      r.chief = r.index == 0;
      r.name = fmt::format("worker {}", r.index);
      return r;
    }
    r.server = launch.rank < o_.servers;
    r.index = r.server ? launch.rank : launch.rank - static_cast<int>(o_.servers);
    r.chief = !r.server && r.index == 0;
    r.name = r.server ? fmt::format("ps server {}", r.index) : fmt::format("worker {}", r.index);
    return r;
  }

  std::unique_ptr<Strategy> build(const BuildContext& c) const override;
  int serve(const BuildContext& c) const override;

  std::unique_ptr<StrategySpec> clone() const override { return std::make_unique<PsSpec>(*this); }

 private:
  int64_t worker_count(const JobFacts& job) const {
    if (!job.launched) return job.workers;
    return o_.colocate ? job.launched_world_size : job.launched_world_size - o_.servers;
  }
  // colocate's checks and process plan.
  void validate_colocated(const JobFacts& job) const;
  ProcessPlan colocated_plan(const JobFacts& job) const;
  // The ServerOptions of server `index`, as serve() and a hosting worker use them.
  ps::ServerOptions server_options(const BuildContext& c, int index) const;
  // Worker `worker`'s hosted server, when it hosts one (colocate, worker < S).
  std::unique_ptr<HostedServer> hosted_server(const BuildContext& c, int worker) const;
  // The servers' fixed endpoints by index; empty when none are fixed.
  std::vector<std::string> fixed_endpoints(const comm::LaunchSettings& s) const;
  // Whether the job's links go without frame MAC and CRC: the endpoints are
  // ipc sockets in the launcher's private run folder (mkdtemp, 0700; every
  // process checks its mode and owner) and security.encrypt is off
  // (docs/security.md, "One host"). Every process of a launch decides alike.
  static bool private_ipc(const comm::LaunchSettings& s) {
    return s.ps_endpoints.empty() && !s.run_dir.empty() && !s.tcp_only && !s.encrypt;
  }
  // Registers `endpoint` at the rendezvous at `coordinator` (a
  // comm::CoordinatorMeeting's address).
  std::vector<comm::PeerEndpoint> meet(const BuildContext& c, const comm::JobAuth& auth,
                                       const std::string& endpoint, const std::string& coordinator,
                                       Deadline deadline) const;
  std::optional<ps::ServerRestore> restore_source(const BuildContext& c) const;
  // The servers' endpoints, by index, from the rendezvous table.
  std::vector<std::string> server_endpoints(const std::vector<comm::PeerEndpoint>& table) const;
  std::vector<std::string> discover_servers(const BuildContext& c) const;

  PsJobOptions o_;
  KeyLines where_;
};

void PsSpec::validate_colocated(const JobFacts& job) const {
  const int64_t workers = worker_count(job);
  if (o_.servers > workers) {
    throw where_.error("colocate",
                       fmt::format("{} servers with {} workers: each co-located server runs in a "
                                   "worker process of its own (server i in worker i), so "
                                   "distributed.ps.servers must be at most the workers",
                                   o_.servers, workers));
  }
  if (o_.replicas > 0) {
    throw where_.error("colocate",
                       fmt::format("co-located servers with distributed.ps.replicas = {} are not "
                                   "supported: a worker's death takes its server, and a backup "
                                   "taking over inside another worker is not built",
                                   o_.replicas));
  }
  if (job.max_restarts > 0) {
    throw job.where.error("train.max_restarts",
                          fmt::format("restarting failed processes ({}) with "
                                      "distributed.ps.colocate is not supported: a worker's "
                                      "death takes its hosted server and its optimizer state; "
                                      "run the servers as processes of their own",
                                      job.max_restarts));
  }
}

ProcessPlan PsSpec::colocated_plan(const JobFacts& job) const {
  ProcessPlan p;
  const auto servers = static_cast<int>(o_.servers);
  p.processes = static_cast<int>(worker_count(job));
  p.replace_failed = true;  // max_restarts is 0: a failed non-hosting worker is left out
  p.min_workers = static_cast<int>(job.min_workers > 0 ? job.min_workers : 1);
  p.essential_slots = servers;  // the hosting workers, the chief (worker 0) among them
  p.slot_name = [servers](int slot) {
    return slot < servers ? fmt::format("worker {} (hosting ps server {})", slot, slot)
                          : fmt::format("worker {}", slot);
  };
  return p;
}

std::unique_ptr<HostedServer> PsSpec::hosted_server(const BuildContext& c, int worker) const {
  if (!o_.colocate || worker >= o_.servers) return nullptr;
  const comm::LaunchSettings& settings = c.launch->settings;
  const comm::JobAuth auth(c.job_name, settings.job_secret, settings.encrypt);
  ps::ServerOptions o = server_options(c, worker);
  o.bind_endpoint = fixed_endpoints(settings).at(static_cast<size_t>(worker));
  return std::make_unique<HostedServer>(std::move(o), auth, *c.logger);
}

std::vector<std::string> PsSpec::fixed_endpoints(const comm::LaunchSettings& s) const {
  std::vector<std::string> endpoints;
  if (s.ps_endpoints.empty()) {
    if (s.run_dir.empty() || s.tcp_only) return endpoints;
    for (int64_t i = 0; i < o_.servers; ++i) {
      endpoints.push_back(fmt::format("ipc://{}/server-{}", s.run_dir, i));
    }
    return endpoints;
  }
  for (size_t start = 0;;) {
    const size_t comma = s.ps_endpoints.find(',', start);
    endpoints.push_back(s.ps_endpoints.substr(start, comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  const bool blank = std::any_of(endpoints.begin(), endpoints.end(),
                                 [](const std::string& e) { return e.empty(); });
  if (blank || static_cast<int64_t>(endpoints.size()) != o_.servers) {
    throw ConfigError(
        fmt::format("DTRAIN_PS_ENDPOINTS='{}' names {} endpoint(s); the job has {} "
                    "server(s)",
                    s.ps_endpoints, endpoints.size(), o_.servers));
  }
  return endpoints;
}

std::vector<comm::PeerEndpoint> PsSpec::meet(const BuildContext& c, const comm::JobAuth& auth,
                                             const std::string& endpoint,
                                             const std::string& coordinator,
                                             Deadline deadline) const {
  const comm::LaunchInfo& launch = *c.launch;
  comm::PeerEndpoint self;
  self.rank = launch.rank;
  self.host = comm::this_host_name();
  self.tcp_endpoint = endpoint;
  return comm::rendezvous(coordinator, self, launch.world_size, auth, deadline, *c.logger);
}

// What a replacement server restores: the newest intact checkpoint in the
// job's output folder that belongs to this job (written by this launch, or
// any when the job resumes from its checkpoints); nullopt when there is none.
std::optional<ps::ServerRestore> PsSpec::restore_source(const BuildContext& c) const {
  Logger& logger = *c.logger;
  const io::CheckpointDirectory dir(c.output, std::max<int64_t>(1, c.keep_checkpoints),
                                    io::default_file_system(), logger);
  const std::string& launch_id = c.launch->settings.launch_id;
  std::vector<int64_t> steps = dir.steps();
  for (auto step = steps.rbegin(); step != steps.rend(); ++step) {
    const std::string path = dir.path_for(*step);
    io::Checkpoint checkpoint;
    try {
      checkpoint = io::read_checkpoint(path);
    } catch (const std::exception& e) {
      logger.warn("replacement server: skipping {}: {}", path, e.what());
      continue;
    }
    if (!checkpoint.has_section("model") || !checkpoint.has_section("optimizer")) continue;
    const auto& meta = checkpoint.section("optimizer").metadata();
    const auto launch = meta.find(ps::kCheckpointLaunchKey);
    if (!c.facts.resume && (launch == meta.end() || launch->second != launch_id)) {
      logger.warn(
          "replacement server: skipping {}: written by another run of the job (this one "
          "started with --no-resume)",
          path);
      continue;
    }
    return ps::ServerRestore{checkpoint.section("model"), checkpoint.section("optimizer"),
                             fmt::format("{} (step {})", path, checkpoint.step)};
  }
  logger.warn("replacement server: no checkpoint of this run in '{}'", c.output);
  return std::nullopt;
}

ps::ServerOptions PsSpec::server_options(const BuildContext& c, int index) const {
  const comm::LaunchSettings& settings = c.launch->settings;
  ps::ServerOptions o;
  o.server = index;
  o.num_servers = static_cast<int>(o_.servers);
  o.num_workers = static_cast<int>(worker_count(c.facts));
  const std::string& listen_host = settings.listen_host;
  o.bind_endpoint =
      fmt::format("tcp://{}:0", listen_host.find(':') != std::string::npos ? "[" + listen_host + "]"
                                                                           : listen_host);
  o.consistency = ps::parse_consistency(o_.consistency);
  o.backup_workers = static_cast<int>(o_.backup_workers);
  o.staleness_bound = static_cast<int>(o_.staleness);
  o.optimizer = c.optimizer;
  o.seed = c.seed;
  if (!o_.colocate) o.link = c.link;  // a hosting worker's link is its client's
  o.heartbeat_timeout = c.heartbeat_timeout;
  // A worker still starting (loading its data) is not dead: it has the job's
  // timeout for its first frame.
  o.join_timeout = c.timeout;
  o.on_version = c.on_server_version;
  o.replicas = static_cast<int>(o_.replicas);
  o.replica_timeout = c.heartbeat_timeout;
  o.private_ipc = private_ipc(settings);
  o.shm = o_.shm;
  return o;
}

int PsSpec::serve(const BuildContext& c) const {
  const comm::LaunchInfo& launch = *c.launch;
  Logger& logger = *c.logger;
  const ProcessRole r = role(c.facts, launch);
  DTRAIN_CHECK(r.server, "rank {} is not a server of {}", launch.rank, o_.servers);
  const comm::JobAuth auth(c.job_name, launch.settings.job_secret, launch.settings.encrypt);

  ps::ServerOptions o = server_options(c, r.index);
  const std::vector<std::string> fixed = fixed_endpoints(launch.settings);
  const bool replacement = launch.settings.restart_count > 0;
  std::unique_ptr<comm::RendezvousServer> coordinator;
  std::string endpoint;
  std::unique_ptr<ps::Server> server;
  if (!fixed.empty()) {
    // Fixed endpoints: no rendezvous, and a replacement binds its
    // predecessor's address, where the workers reconnect by themselves.
    o.bind_endpoint = fixed[static_cast<size_t>(r.index)];
    if (replacement) {
      o.replacement = true;
      o.restore = restore_source(c);
    }
    server = std::make_unique<ps::Server>(o, auth, logger);
    endpoint = server->endpoint();
    server->set_server_endpoints(fixed);
  } else {
    if (replacement) {
      throw ConfigError(
          fmt::format("ps server {} was restarted (DTRAIN_RESTART_COUNT={}) without "
                      "fixed endpoints (DTRAIN_PS_ENDPOINTS or DTRAIN_RUN_DIR): the "
                      "workers could not find it",
                      r.index, launch.settings.restart_count));
    }
    // Rank 0 hosts the rendezvous; it lives until this server stops serving,
    // long after every rank got the table (workers finish only after it).
    const Deadline deadline = Deadline::after(c.timeout);
    comm::CoordinatorMeeting meeting(launch, auth, deadline, logger);
    coordinator = meeting.take_server();
    server = std::make_unique<ps::Server>(o, auth, logger);
    endpoint = advertised(server->endpoint(), launch.settings);
    server->set_server_endpoints(
        server_endpoints(meet(c, auth, endpoint, meeting.address(), deadline)));
  }
  logger.info("server {} of {} ({} workers, {}): serving at {}{}", r.index, o_.servers,
              o.num_workers, o_.consistency, endpoint, o.replacement ? " as a replacement" : "");
  const std::stop_source never;
  const ps::ServeResult result = server->run(never.get_token());
  logger.info("server {}: done after {} versions, {} pushes applied, {} dropped, {} rejected",
              r.index, result.stats.version, result.stats.pushes_applied,
              result.stats.pushes_dropped, result.stats.requests_rejected);
  if (result.end == ps::ServeEnd::kAbandoned) {
    // A failure, so that the launcher stops the job instead of waiting for
    // this server (and the others) forever.
    throw CommError(-1, fmt::format("ps server {}", r.index),
                    fmt::format("every worker died before training ended and none rejoined "
                                "within {} ms",
                                o.rejoin_window().count()));
  }
  return 0;
}

std::vector<std::string> PsSpec::discover_servers(const BuildContext& c) const {
  std::vector<std::string> fixed = fixed_endpoints(c.launch->settings);
  if (!fixed.empty()) return fixed;
  if (o_.colocate) {
    throw ConfigError(
        "distributed.ps.colocate needs fixed server endpoints: dtrain's own launcher (its run "
        "folder, DTRAIN_RUN_DIR, without DTRAIN_TCP_ONLY) or DTRAIN_PS_ENDPOINTS naming server "
        "i's endpoint on worker i's host; the rendezvous has no server processes to meet");
  }
  const comm::JobAuth auth(c.job_name, c.launch->settings.job_secret, c.launch->settings.encrypt);
  const Deadline deadline = Deadline::after(c.timeout);
  const comm::CoordinatorMeeting meeting(*c.launch, auth, deadline, *c.logger);
  return server_endpoints(meet(c, auth, "", meeting.address(), deadline));
}

std::vector<std::string> PsSpec::server_endpoints(
    const std::vector<comm::PeerEndpoint>& table) const {
  std::vector<std::string> endpoints;
  for (int64_t s = 0; s < o_.servers; ++s) {
    const comm::PeerEndpoint& e = table.at(static_cast<size_t>(s));
    if (e.tcp_endpoint.empty()) {
      throw DataError(
          fmt::format("ps rendezvous: rank {} (server {}) published no endpoint", s, s));
    }
    endpoints.push_back(e.tcp_endpoint);
  }
  return endpoints;
}

std::unique_ptr<Strategy> PsSpec::build(const BuildContext& c) const {
  const ProcessRole r = role(c.facts, *c.launch);
  ps::ClientOptions client;
  client.worker = r.index;
  client.num_workers = static_cast<int>(worker_count(c.facts));
  {
    TraceSpan span(c.trace, "rendezvous", "setup");
    client.server_endpoints = discover_servers(c);
  }
  client.link = c.link;
  client.private_ipc = private_ipc(c.launch->settings);
  client.shm = o_.shm;
  client.timeout = c.timeout;
  client.heartbeat_interval = std::min(std::chrono::milliseconds(1000), c.heartbeat_timeout / 4);
  client.replicas = o_.takeover.value_or(client.private_ipc) ? static_cast<int>(o_.replicas) : 0;
  client.takeover_timeout = c.heartbeat_timeout;
  // A silent primary (stopped, hung) is taken over where a dead one is: the
  // takeover's term fences it should it come back (docs "Fencing").
  client.silent_takeover = client.replicas > 0 ? c.heartbeat_timeout : std::chrono::milliseconds(0);
  PsOptions o;
  o.launch_id = c.launch->settings.launch_id;
  o.reshard_lost_workers = o_.backup_workers == 0;
  o.consistency = ps::parse_consistency(o_.consistency);
  o.dynamic_batch = c.dynamic_batch;
  check_local_sgd(c.compression, o_.consistency, c.optimizer);
  o.compression = c.compression;
  const comm::JobAuth auth(c.job_name, c.launch->settings.job_secret, c.launch->settings.encrypt);
  o.learning_rate = c.optimizer.lr;
  o.trace = c.trace;
  o.overlap = o_.overlap;
  o.prefetch_rows = o_.prefetch_rows;
  if (std::unique_ptr<HostedServer> hosted = hosted_server(c, r.index)) {
    return make_colocated_ps_strategy(std::move(hosted), c.make_model(), std::move(client), auth,
                                      *c.logger, o, c.loss, c.timeout);
  }
  return std::make_unique<PsStrategy>(c.make_model(), std::move(client), auth, *c.logger, o,
                                      c.loss);
}

}  // namespace

std::unique_ptr<StrategySpec> make_ps_spec() { return std::make_unique<PsSpec>(); }

}  // namespace dtrain::strategy
