#include "cli/ps_job.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <stop_token>

#include "cli/test_hooks.h"
#include "comm/wire/auth.h"
#include "comm/rendezvous/rendezvous.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "ps/server.h"
#include "ps/state_layout.h"

namespace dtrain::cli {

namespace {

bool is_wildcard(const std::string& host) {
  return host == "*" || host == "0.0.0.0" || host == "::";
}

std::string env_or(const std::map<std::string, std::string>& env, const char* key,
                   const std::string& fallback) {
  const auto it = env.find(key);
  return it == env.end() || it->second.empty() ? fallback : it->second;
}

std::string this_host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

comm::JobAuth job_auth(const train::JobConfig& job, const std::map<std::string, std::string>& env) {
  return comm::JobAuth(job.name, env_or(env, "DTRAIN_JOB_SECRET", ""));
}

void check_coordinator(const comm::LaunchInfo& launch, const char* role) {
  if (launch.coordinator.empty()) {
    throw ConfigError(fmt::format(
        "{} (rank {} of {}, {}) has no coordinator address: set DTRAIN_COORDINATOR=host:port", role,
        launch.rank, launch.world_size, launch.source));
  }
}

// The endpoint workers should connect to: the bound one, with the host
// replaced by DTRAIN_ADVERTISE_HOST (or this machine's name when the server
// listens on every interface).
std::string advertised(const std::string& bound, const std::string& listen_host,
                       const std::map<std::string, std::string>& env) {
  std::string host = env_or(env, "DTRAIN_ADVERTISE_HOST", "");
  if (host.empty() && is_wildcard(listen_host)) host = this_host_name();
  if (host.empty()) return bound;
  const auto colon = bound.rfind(':');
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return "tcp://" + host + bound.substr(colon);
}

int serve(ps::Server& server, int index, Logger& logger) {
  const std::stop_source never;
  const ps::ServeResult result = server.run(never.get_token());
  logger.info("server {}: done after {} versions, {} pushes applied, {} dropped, {} rejected",
              index, result.stats.version, result.stats.pushes_applied,
              result.stats.pushes_dropped, result.stats.requests_rejected);
  return 0;
}

std::vector<comm::PeerEndpoint> meet(const train::JobConfig& job, const comm::LaunchInfo& launch,
                                     const comm::JobAuth& auth, const std::string& endpoint,
                                     Logger& logger) {
  comm::PeerEndpoint self;
  self.rank = launch.rank;
  self.host = this_host_name();
  self.tcp_endpoint = endpoint;
  return comm::rendezvous(launch.coordinator, self, launch.world_size, auth,
                          Deadline::after(std::chrono::milliseconds(job.distributed.timeout_ms)),
                          logger);
}

// The server endpoints a launcher fixed in DTRAIN_PS_ENDPOINTS, by server
// index; empty when unset.
std::vector<std::string> fixed_endpoints(const train::JobConfig& job,
                                         const std::map<std::string, std::string>& env) {
  const std::string text = env_or(env, kPsEndpointsVariable, "");
  std::vector<std::string> endpoints;
  if (text.empty()) return endpoints;
  for (size_t start = 0;;) {
    const size_t comma = text.find(',', start);
    endpoints.push_back(text.substr(start, comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  const bool blank = std::any_of(endpoints.begin(), endpoints.end(),
                                 [](const std::string& e) { return e.empty(); });
  if (blank || static_cast<int64_t>(endpoints.size()) != job.distributed.servers) {
    throw ConfigError(fmt::format("{}='{}' names {} endpoint(s); the job has {} server(s)",
                                  kPsEndpointsVariable, text, endpoints.size(),
                                  job.distributed.servers));
  }
  return endpoints;
}

bool is_replacement(const std::map<std::string, std::string>& env) {
  const std::string count = env_or(env, "DTRAIN_RESTART_COUNT", "0");
  return count != "0";
}

// What a replacement server restores: the newest intact checkpoint in the
// job's output folder that belongs to this job (written by this launch, or any
// when the job resumes from its checkpoints); nullopt when there is none.
std::optional<ps::ServerRestore> restore_source(const train::JobConfig& job,
                                                const std::map<std::string, std::string>& env,
                                                Logger& logger) {
  const io::CheckpointDirectory dir(job.output, std::max<int64_t>(1, job.train.keep_checkpoints),
                                    io::default_file_system(), logger);
  const std::string launch_id = env_or(env, kLaunchIdVariable, "");
  std::vector<int64_t> steps = dir.steps();
  for (auto step = steps.rbegin(); step != steps.rend(); ++step) {
    const std::string path = dir.path_for(*step);
    io::Checkpoint c;
    try {
      c = io::read_checkpoint(path);
    } catch (const std::exception& e) {
      logger.warn("replacement server: skipping {}: {}", path, e.what());
      continue;
    }
    if (!c.has_section("model") || !c.has_section("optimizer")) continue;
    const auto& meta = c.section("optimizer").metadata();
    const auto launch = meta.find(ps::kCheckpointLaunchKey);
    if (!job.resume && (launch == meta.end() || launch->second != launch_id)) {
      logger.warn("replacement server: skipping {}: written by another run of the job (this one "
                  "started with --no-resume)",
                  path);
      continue;
    }
    return ps::ServerRestore{c.section("model"), c.section("optimizer"),
                             fmt::format("{} (step {})", path, c.step)};
  }
  logger.warn("replacement server: no checkpoint of this run in '{}'", job.output);
  return std::nullopt;
}

}  // namespace

PsRole ps_role(int global_rank, int servers) {
  if (global_rank < servers) return {true, global_rank};
  return {false, global_rank - servers};
}

std::unique_ptr<Logger> role_logger(const std::string& prefix, LogLevel level) {
  return std::make_unique<Logger>(level, [prefix](LogLevel l, std::string_view message) {
    const std::string line = fmt::format("[{}] {}: {}\n", to_string(l), prefix, message);
    std::fwrite(line.data(), 1, line.size(), stderr);
  });
}

int run_ps_server(const train::JobConfig& job, const comm::LaunchInfo& launch,
                  const std::map<std::string, std::string>& env, Logger& logger) {
  if (fixed_endpoints(job, env).empty()) check_coordinator(launch, "ps server");
  const auto servers = static_cast<int>(job.distributed.servers);
  const PsRole role = ps_role(launch.rank, servers);
  DTRAIN_CHECK(role.server, "rank {} is not a server of {}", launch.rank, servers);
  const comm::JobAuth auth = job_auth(job, env);

  ps::ServerOptions o;
  o.server = role.index;
  o.num_servers = servers;
  o.num_workers = launch.world_size - servers;
  const std::string listen_host = env_or(env, "DTRAIN_LISTEN_HOST", "127.0.0.1");
  o.bind_endpoint =
      fmt::format("tcp://{}:0", listen_host.find(':') != std::string::npos ? "[" + listen_host + "]"
                                                                           : listen_host);
  o.consistency = ps::parse_consistency(job.distributed.consistency);
  o.backup_workers = static_cast<int>(job.distributed.backup_workers);
  o.staleness_bound = static_cast<int>(job.distributed.staleness);
  o.optimizer = job.optimizer;
  o.seed = job.seed;
  o.heartbeat_timeout = std::chrono::milliseconds(job.distributed.heartbeat_timeout_ms);
  // A worker still starting (loading its data) is not dead: it has the job's
  // timeout for its first frame.
  o.join_timeout = std::chrono::milliseconds(job.distributed.timeout_ms);
  if (const std::optional<int64_t> kill_at = test_kill_step(env, launch.rank)) {
    o.on_version = [at = static_cast<uint64_t>(*kill_at)](uint64_t version) {
      if (version == at) raise(SIGKILL);
    };
  }
  const std::vector<std::string> fixed = fixed_endpoints(job, env);
  if (!fixed.empty()) {
    // A launcher fixed the endpoints: no rendezvous, and a replacement binds
    // its predecessor's address, where the workers reconnect by themselves.
    o.bind_endpoint = fixed[static_cast<size_t>(role.index)];
    if (is_replacement(env)) {
      o.replacement = true;
      o.restore = restore_source(job, env, logger);
    }
    ps::Server server(o, job_auth(job, env), logger);
    logger.info("server {} of {} ({} workers, {}): serving at {}{}", role.index, servers,
                o.num_workers, job.distributed.consistency, server.endpoint(),
                o.replacement ? " as a replacement" : "");
    return serve(server, role.index, logger);
  }
  if (is_replacement(env)) {
    throw ConfigError(fmt::format("ps server {} was restarted (DTRAIN_RESTART_COUNT={}) without "
                                  "fixed endpoints ({}): the workers could not find it",
                                  role.index, env_or(env, "DTRAIN_RESTART_COUNT", ""),
                                  kPsEndpointsVariable));
  }

  // Rank 0 hosts the rendezvous; it lives until this server stops serving,
  // long after every rank got the table (workers finish only after it).
  std::unique_ptr<comm::RendezvousServer> coordinator;
  if (launch.rank == 0) {
    const comm::HostPort hp = comm::parse_host_port(launch.coordinator, "coordinator");
    const std::string bind_host = hp.host == "localhost" ? "127.0.0.1" : hp.host;
    coordinator = std::make_unique<comm::RendezvousServer>(
        is_wildcard(listen_host) ? "0.0.0.0" : bind_host, hp.port, launch.world_size, auth, logger);
  }
  ps::Server server(o, auth, logger);
  const std::string endpoint = advertised(server.endpoint(), listen_host, env);
  meet(job, launch, auth, endpoint, logger);
  logger.info("server {} of {} ({} workers, {}): serving at {}", role.index, servers, o.num_workers,
              job.distributed.consistency, endpoint);
  return serve(server, role.index, logger);
}

std::vector<std::string> discover_ps_servers(const train::JobConfig& job,
                                             const comm::LaunchInfo& launch,
                                             const std::map<std::string, std::string>& env,
                                             Logger& logger) {
  std::vector<std::string> fixed = fixed_endpoints(job, env);
  if (!fixed.empty()) return fixed;
  check_coordinator(launch, "ps worker");
  const auto servers = static_cast<int>(job.distributed.servers);
  const std::vector<comm::PeerEndpoint> table = meet(job, launch, job_auth(job, env), "", logger);
  std::vector<std::string> endpoints;
  for (int s = 0; s < servers; ++s) {
    const comm::PeerEndpoint& e = table.at(static_cast<size_t>(s));
    if (e.tcp_endpoint.empty()) {
      throw DataError(
          fmt::format("ps rendezvous: rank {} (server {}) published no endpoint", s, s));
    }
    endpoints.push_back(e.tcp_endpoint);
  }
  return endpoints;
}

}  // namespace dtrain::cli
