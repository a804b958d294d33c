// Launch environment: which rank this process is, how many ranks the job has,
// its rank on this host, and where the rendezvous coordinator listens.
//
// resolve_launch_env() is a pure function of an environment map (the command
// line reads the real environment and passes it in; library code never calls
// getenv). Each field is taken from the first source that provides it:
//   1. explicit values (command-line flags) in LaunchOverrides,
//   2. dtrain's own variables:  DTRAIN_RANK, DTRAIN_WORLD_SIZE,
//      DTRAIN_LOCAL_RANK, DTRAIN_COORDINATOR,
//   3. OpenMPI (mpirun):        OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE,
//                               OMPI_COMM_WORLD_LOCAL_RANK,
//   4. Slurm (srun):            SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID.
// With no rank and no world size anywhere the job is a single process
// (rank 0 of 1). The coordinator ("host:port") comes from the first of
// --coordinator, DTRAIN_COORDINATOR and, when the rank is Slurm's, Slurm's
// node list and job id (slurm_coordinator.h); when the rank is OpenMPI's and
// none is given, rank 0 publishes it through a file (`discovery`,
// coordinator_discovery.h). It is required when world_size > 1. When no
// source gives the local rank, it is the rank (every rank assumed on one
// host).
// Throws ConfigError naming the variable (or "--flag") and the bad value:
// a non-integer, a negative rank, rank >= world size, a world size < 1 or
// over kMaxWorldSize, only one of rank / world size found, a missing or
// malformed coordinator.
// Thread safety: pure. Never blocks.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace dtrain::comm {

// The largest world size accepted: far beyond any job dtrain runs, and small
// enough that per-rank tables (addresses, counts) stay small.
inline constexpr int kMaxWorldSize = 65536;

struct LaunchOverrides {
  std::optional<int> rank;
  std::optional<int> world_size;
  std::optional<int> local_rank;
  std::optional<std::string> coordinator;
  // Throw when a process of several has no coordinator. Off: the
  // coordinator stays empty and whoever needs one says so (an MPI job needs
  // none).
  bool require_coordinator = true;
};

// What a launcher tells each process beyond its place (DTRAIN_* variables;
// dtrain's own launcher sets them, another launcher may):
struct LaunchSettings {
  std::string job_secret;  // DTRAIN_JOB_SECRET: authenticates every frame ("" none)
  bool insecure = false;   // DTRAIN_INSECURE=1: run without a secret on purpose
  // DTRAIN_TCP_ONLY=1: every link over tcp even between processes of one
  // host (no ipc, no shared memory), as across hosts: for tests and
  // benchmarks of encrypted links on one machine.
  bool tcp_only = false;
  bool encrypt = false;  // DTRAIN_ENCRYPT=1 or the job's security.encrypt: CURVE on every link
  std::string listen_host = "127.0.0.1";  // DTRAIN_LISTEN_HOST: the address to bind
  std::string advertise_host;             // DTRAIN_ADVERTISE_HOST: the address peers use
  std::string elastic_coordinator;        // DTRAIN_ELASTIC_COORDINATOR: host:port (elastic mode)
  std::string ps_endpoints;  // DTRAIN_PS_ENDPOINTS: fixed ps server endpoints, comma-separated
  std::string launch_id;     // DTRAIN_LAUNCH_ID: names one launch of the job
  int restart_count = 0;     // DTRAIN_RESTART_COUNT: processes started for this slot before
  // DTRAIN_RUN_DIR: the private folder of a run of dtrain's own launcher.
  // Besides holding sockets it means "one host, fixed endpoints" to the peer
  // links and the ps (strategy/ps_spec.h).
  std::string run_dir;
  // Where this process's ipc sockets bind, and nothing else: the first of
  // DTRAIN_SOCKET_DIR (a launcher's or an etcd agent's private folder),
  // DTRAIN_RUN_DIR, TMPDIR and /tmp. A TMPDIR too deep for a socket path
  // (sockaddr_un) is passed over for /tmp.
  std::string socket_dir = "/tmp";
  std::string status_fd;       // DTRAIN_STATUS_FD: where to tell the launcher why it failed
  bool output_locked = false;  // DTRAIN_OUTPUT_LOCKED=1: the launcher holds the output lock
  // DTRAIN_KEY_FILE: a key file holding the job secret (comm/wire/key_file.h);
  // after resolve_job_secret() (job_secret.h), the absolute path of the key
  // file in use.
  std::string key_file;
  // A worker of a per-host agent (cli/etcd_agent.h): DTRAIN_RDZV is
  // "etcd://HOST:PORT/JOB_ID", the group's bounds DTRAIN_RDZV_MIN_WORKERS /
  // DTRAIN_RDZV_MAX_WORKERS, and DTRAIN_RDZV_SLOT_BASE the agent's first
  // slot (its node index times its workers). resolve_launch_env() then
  // makes the rank the job-wide slot (base + the local rank) and the world
  // size nominal (at least 2, the max, and slot + 1): the elastic group's
  // own ranks and size come from etcd.
  std::string rdzv;
  int rdzv_min_workers = 1;
  int rdzv_max_workers = 1;
  int rdzv_slot_base = 0;
  // DTRAIN_RDZV_LEASE_TTL: the lease TTL in seconds (the agent's --rdzv-ttl).
  int rdzv_lease_ttl_s = 10;
};

// "etcd://HOST:PORT/JOB_ID" split; ConfigError naming `where` otherwise.
struct RdzvUrl {
  std::string endpoint;  // "host:port"
  std::string job_id;    // no '/'
};
RdzvUrl parse_rdzv_url(const std::string& url, const std::string& where);

// Reads LaunchSettings from `env`; ConfigError naming the variable for a
// malformed DTRAIN_RESTART_COUNT or DTRAIN_INSECURE.
LaunchSettings resolve_launch_settings(const std::map<std::string, std::string>& env);

class CoordinatorFiles;  // comm/rendezvous/coordinator_discovery.h

// Under mpirun with no coordinator given: rank 0 publishes its address in a
// file named after the launch (coordinator_discovery.h).
struct CoordinatorDiscovery {
  std::string launch_id;  // mpirun_launch_id(); empty: no discovery by file
  std::string folder;     // set by the command line: the job's output folder
  // Set by the command line; it outlives every connection of the process.
  CoordinatorFiles* files = nullptr;
};

struct LaunchInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string coordinator;  // "host:port"; empty for a single process
  // Where `coordinator` came from, for the log: "--coordinator",
  // "DTRAIN_COORDINATOR" or the Slurm variables it was derived from.
  std::string coordinator_source;
  CoordinatorDiscovery discovery;
  // Where rank and world size came from, e.g. "DTRAIN_RANK/DTRAIN_WORLD_SIZE".
  std::string source;
  LaunchSettings settings;
  // Whether this process is one of several of a launched job.
  bool launched() const { return world_size > 1; }
};

LaunchInfo resolve_launch_env(const std::map<std::string, std::string>& env,
                              const LaunchOverrides& overrides = {});

// Splits "host:port" (IPv6 hosts in brackets: "[::1]:29500"); throws
// ConfigError naming `where` for a missing host, port or a port outside 1..65535.
struct HostPort {
  std::string host;
  int port = 0;
};
HostPort parse_host_port(const std::string& text, const std::string& where);

}  // namespace dtrain::comm
