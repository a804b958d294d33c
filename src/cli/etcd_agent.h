// The per-host agent of a job whose elastic generations live in etcd
// (docs/elastic.md, "The per-host agent"): `dtrain train JOB --rdzv
// etcd://HOST:PORT/JOB_ID --nnodes MIN:MAX --nproc-per-node K`. It claims
// the lowest free node index of the job in etcd (a create-if-absent
// compare-and-swap on `/dtrain/<job-id>/nodes/<i>`, never reused, so a
// stale agent and its replacement never share slots), starts K local
// workers under the local Launcher in elastic mode, each with DTRAIN_RDZV,
// the group's bounds (MIN*K..MAX*K workers) and DTRAIN_RDZV_SLOT_BASE
// (i*K), and supervises them with the launcher's Supervisor. It hosts no
// coordinator: the workers form their generations in etcd
// (comm/rendezvous/etcd_rendezvous.h), so any agent, the first included,
// can die. Its local job ends when a worker finished training (exit 0) and
// every local worker has ended, or when fewer than one local worker runs.
//
// The agent's own record (cli/etcd_agent_presence.h): node index i, and an
// alive key under its lease. An agent silent past the TTL (its host frozen)
// is left out: when it runs again it stops its workers and exits 1, saying
// so ("... left out (LeftOut) ..."), without touching the group that went
// on. The last agent of the job to leave removes the job's keys from etcd,
// so that the same job id may be used again.
//
// The local workers' ipc sockets bind in a private folder of the agent
// (mkdtemp, mode 0700, under TMPDIR or /tmp; DTRAIN_SOCKET_DIR), removed
// when the agent returns: a worker killed on the way leaves no socket.
//
// Every agent of the job must be given the same DTRAIN_JOB_SECRET or key
// file (DTRAIN_KEY_FILE): the workers of different hosts authenticate each
// other with it.
//
// Blocking: for the local workers' lifetime, bounded by `deadline`.
// Errors: UsageError for a malformed --rdzv / --nnodes / --nproc-per-node
// or neither DTRAIN_JOB_SECRET nor DTRAIN_KEY_FILE, or a lease TTL under
// 1 s; TimeoutError when etcd does not answer the node claim within 30 s;
// std::system_error when the socket folder cannot be made; what
// Launcher::run throws.
#pragma once

#include <chrono>
#include <ostream>
#include <string>

#include "cli/launcher.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::cli {

struct AgentOptions {
  std::string rdzv;    // etcd://HOST:PORT/JOB_ID
  std::string nnodes;  // "MIN:MAX" or "N"
  int nproc_per_node = 1;
  int max_restarts = 0;  // replacements of failed local workers (restart mode: group restarts)
  // Restart mode (cli/etcd_restart_agent.h) instead of elastic.
  bool restart = false;
  // This host's address: its workers bind it and the other hosts' workers
  // reach them there (DTRAIN_LISTEN_HOST / DTRAIN_ADVERTISE_HOST). Empty:
  // DTRAIN_HOST_ADDRESS of `base.environment`, else 127.0.0.1.
  std::string host_address;
  // The lease TTL of the agent and of its workers (DTRAIN_RDZV_LEASE_TTL):
  // a host silent this long is dropped from the group.
  std::chrono::seconds lease_ttl{10};
};

// `base` as for Launcher (argv, environment); its workers are set here.
LaunchResult run_etcd_agent(const AgentOptions& agent, LaunchOptions base, std::ostream& out,
                            std::ostream& err, Logger& logger, Deadline deadline);

}  // namespace dtrain::cli
