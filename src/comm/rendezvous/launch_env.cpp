#include "comm/rendezvous/launch_env.h"

#include <algorithm>
#include <charconv>
#include <vector>

#include "comm/rendezvous/coordinator_discovery.h"
#include "comm/rendezvous/slurm_coordinator.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

constexpr const char* kEnvironment = "environment";

// A value found for one field, and the name it was found under.
struct Found {
  int value = 0;
  std::string name;
};

int parse_int(const std::string& text, const std::string& name) {
  int value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec == std::errc::result_out_of_range && ptr == end) {
    throw ConfigError(kEnvironment, name, 0,
                      fmt::format("'{}' is out of range for a 32-bit integer", text));
  }
  if (text.empty() || ec != std::errc() || ptr != end) {
    throw ConfigError(kEnvironment, name, 0, fmt::format("'{}' is not an integer", text));
  }
  return value;
}

// The first of `names` present in `env`, parsed; or the explicit value.
std::optional<Found> first_of(const std::optional<int>& explicit_value, const char* flag,
                              const std::map<std::string, std::string>& env,
                              const std::vector<const char*>& names) {
  if (explicit_value) return Found{*explicit_value, flag};
  for (const char* name : names) {
    if (auto it = env.find(name); it != env.end()) return Found{parse_int(it->second, name), name};
  }
  return std::nullopt;
}

// Without a coordinator given: Slurm's derived one, or OpenMPI's discovery
// by file (named after the launch), by who gave the rank.
void launcher_coordinator(const std::map<std::string, std::string>& env, const Found& rank,
                          LaunchInfo& info) {
  if (rank.name == "SLURM_PROCID") {
    if (auto derived = derive_slurm_coordinator(env)) {
      info.coordinator = derived->address;
      info.coordinator_source = derived->source;
    }
  } else if (rank.name == "OMPI_COMM_WORLD_RANK") {
    info.discovery.launch_id = mpirun_launch_id(env);
  }
}

// Longest socket path an ipc endpoint may have (sockaddr_un::sun_path less
// its terminating NUL), and the most a socket's own name takes below its folder.
constexpr size_t kMaxSocketPath = 107;
constexpr size_t kSocketNameBytes = 64;

// LaunchSettings::socket_dir's rule.
std::string socket_dir_of(const std::map<std::string, std::string>& env,
                          const std::string& run_dir) {
  const auto set = [&env](const char* name) {
    const auto it = env.find(name);
    return it == env.end() ? std::string() : it->second;
  };
  if (std::string dir = set("DTRAIN_SOCKET_DIR"); !dir.empty()) return dir;
  if (!run_dir.empty()) return run_dir;
  std::string tmpdir = set("TMPDIR");
  while (tmpdir.size() > 1 && tmpdir.back() == '/') tmpdir.pop_back();
  if (tmpdir.empty() || tmpdir.size() + kSocketNameBytes > kMaxSocketPath) return "/tmp";
  return tmpdir;
}

}  // namespace

HostPort parse_host_port(const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& problem) {
    return ConfigError(
        kEnvironment, where, 0,
        fmt::format("'{}' {}; expected host:port, e.g. 10.0.0.1:29500", text, problem));
  };
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) throw bad("has no port");
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) throw bad("has no host");
  const std::string port_text = text.substr(colon + 1);
  int port = 0;
  const char* end = port_text.data() + port_text.size();
  auto [ptr, ec] = std::from_chars(port_text.data(), end, port);
  if (port_text.empty() || ec != std::errc() || ptr != end || port < 1 || port > 65535) {
    throw bad(fmt::format("has port '{}', not in 1..65535", port_text));
  }
  return HostPort{host, port};
}

LaunchInfo resolve_launch_env(const std::map<std::string, std::string>& env,
                              const LaunchOverrides& overrides) {
  auto rank = first_of(overrides.rank, "--rank", env,
                       {"DTRAIN_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"});
  auto world = first_of(overrides.world_size, "--world-size", env,
                        {"DTRAIN_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"});
  auto local = first_of(overrides.local_rank, "--local-rank", env,
                        {"DTRAIN_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"});

  LaunchInfo info;
  if (!rank && !world) {
    info.source = "default (single process)";
  } else if (!rank) {
    throw ConfigError(kEnvironment, world->name, 0,
                      fmt::format("world size {} is set but no rank is (set DTRAIN_RANK or --rank)",
                                  world->value));
  } else if (!world) {
    throw ConfigError(kEnvironment, rank->name, 0,
                      fmt::format("rank {} is set but no world size is (set DTRAIN_WORLD_SIZE or "
                                  "--world-size)",
                                  rank->value));
  } else {
    info.rank = rank->value;
    info.world_size = world->value;
    info.source = rank->name + "/" + world->name;
  }
  if (info.world_size < 1) {
    throw ConfigError(kEnvironment, world->name, 0,
                      fmt::format("world size {} is not positive", info.world_size));
  }
  if (info.world_size > kMaxWorldSize) {
    throw ConfigError(
        kEnvironment, world->name, 0,
        fmt::format("world size {} is over the limit of {}", info.world_size, kMaxWorldSize));
  }
  if (info.rank < 0 || info.rank >= info.world_size) {
    throw ConfigError(kEnvironment, rank->name, 0,
                      fmt::format("rank {} is outside 0..{} (world size {} from {})", info.rank,
                                  info.world_size - 1, info.world_size, world->name));
  }
  info.local_rank = local ? local->value : info.rank;
  if (info.local_rank < 0 || info.local_rank >= info.world_size) {
    throw ConfigError(
        kEnvironment, local->name, 0,
        fmt::format("local rank {} is outside 0..{}", info.local_rank, info.world_size - 1));
  }

  std::string coordinator_name = "--coordinator";
  if (overrides.coordinator) {
    info.coordinator = *overrides.coordinator;
  } else if (auto it = env.find("DTRAIN_COORDINATOR"); it != env.end()) {
    info.coordinator = it->second;
    coordinator_name = "DTRAIN_COORDINATOR";
  }
  if (!info.coordinator.empty()) info.coordinator_source = coordinator_name;
  if (info.coordinator.empty() && info.world_size > 1) launcher_coordinator(env, *rank, info);
  if (info.coordinator.empty()) {
    if (info.world_size > 1 && overrides.require_coordinator && info.discovery.launch_id.empty()) {
      throw ConfigError(kEnvironment, "DTRAIN_COORDINATOR", 0,
                        fmt::format("world size {} needs a coordinator address host:port (set "
                                    "DTRAIN_COORDINATOR or --coordinator)",
                                    info.world_size));
    }
  } else {
    parse_host_port(info.coordinator, coordinator_name);
  }
  info.settings = resolve_launch_settings(env);
  if (!info.settings.rdzv.empty()) {
    info.rank += info.settings.rdzv_slot_base;
    info.world_size = std::max({2, info.settings.rdzv_max_workers, info.rank + 1});
  }
  return info;
}

RdzvUrl parse_rdzv_url(const std::string& url, const std::string& where) {
  const std::string scheme = "etcd://";
  const size_t slash = url.find('/', scheme.size());
  const bool ok = url.starts_with(scheme) && slash != std::string::npos && slash + 1 < url.size() &&
                  url.find('/', slash + 1) == std::string::npos;
  if (!ok) {
    throw ConfigError(kEnvironment, where, 0,
                      fmt::format("'{}' is not etcd://HOST:PORT/JOB_ID", url));
  }
  RdzvUrl r{url.substr(scheme.size(), slash - scheme.size()), url.substr(slash + 1)};
  parse_host_port(r.endpoint, where);
  return r;
}

LaunchSettings resolve_launch_settings(const std::map<std::string, std::string>& env) {
  LaunchSettings s;
  const auto get = [&env](const char* name, std::string& out) {
    if (const auto it = env.find(name); it != env.end()) out = it->second;
  };
  get("DTRAIN_JOB_SECRET", s.job_secret);
  get("DTRAIN_KEY_FILE", s.key_file);
  get("DTRAIN_LISTEN_HOST", s.listen_host);
  if (s.listen_host.empty()) s.listen_host = "127.0.0.1";
  get("DTRAIN_ADVERTISE_HOST", s.advertise_host);
  get("DTRAIN_ELASTIC_COORDINATOR", s.elastic_coordinator);
  get("DTRAIN_PS_ENDPOINTS", s.ps_endpoints);
  get("DTRAIN_LAUNCH_ID", s.launch_id);
  get("DTRAIN_RUN_DIR", s.run_dir);
  s.socket_dir = socket_dir_of(env, s.run_dir);
  get("DTRAIN_STATUS_FD", s.status_fd);
  get("DTRAIN_RDZV", s.rdzv);
  if (!s.rdzv.empty()) {
    parse_rdzv_url(s.rdzv, "DTRAIN_RDZV");
    for (const auto& [name, field] : {std::pair{"DTRAIN_RDZV_MIN_WORKERS", &s.rdzv_min_workers},
                                      std::pair{"DTRAIN_RDZV_MAX_WORKERS", &s.rdzv_max_workers},
                                      std::pair{"DTRAIN_RDZV_SLOT_BASE", &s.rdzv_slot_base},
                                      std::pair{"DTRAIN_RDZV_LEASE_TTL", &s.rdzv_lease_ttl_s}}) {
      if (const auto it = env.find(name); it != env.end()) *field = parse_int(it->second, name);
    }
    if (s.rdzv_min_workers < 1 || s.rdzv_max_workers < s.rdzv_min_workers || s.rdzv_slot_base < 0 ||
        s.rdzv_max_workers > kMaxWorldSize) {
      throw ConfigError(kEnvironment, "DTRAIN_RDZV_MIN_WORKERS", 0,
                        fmt::format("bad group bounds {}..{} or slot base {}", s.rdzv_min_workers,
                                    s.rdzv_max_workers, s.rdzv_slot_base));
    }
    if (s.rdzv_lease_ttl_s < 1) {
      throw ConfigError(kEnvironment, "DTRAIN_RDZV_LEASE_TTL", 0,
                        fmt::format("lease TTL {} s is under 1 s", s.rdzv_lease_ttl_s));
    }
  }
  if (const auto it = env.find("DTRAIN_RESTART_COUNT"); it != env.end()) {
    s.restart_count = parse_int(it->second, "DTRAIN_RESTART_COUNT");
    if (s.restart_count < 0) {
      throw ConfigError(kEnvironment, "DTRAIN_RESTART_COUNT", 0,
                        fmt::format("'{}' is negative", it->second));
    }
  }
  for (const auto& [name, flag] :
       {std::pair{"DTRAIN_INSECURE", &s.insecure}, std::pair{"DTRAIN_ENCRYPT", &s.encrypt},
        std::pair{"DTRAIN_TCP_ONLY", &s.tcp_only},
        std::pair{"DTRAIN_OUTPUT_LOCKED", &s.output_locked}}) {
    if (const auto it = env.find(name); it != env.end()) {
      if (it->second != "0" && it->second != "1") {
        throw ConfigError(kEnvironment, name, 0, fmt::format("'{}' is not 0 or 1", it->second));
      }
      *flag = it->second == "1";
    }
  }
  return s;
}

}  // namespace dtrain::comm
