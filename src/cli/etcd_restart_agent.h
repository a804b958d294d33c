// Restart mode of the per-host agent (`dtrain train JOB --rdzv etcd://H:P/ID
// --nnodes MIN:MAX --nproc-per-node K --no-elastic`, docs/elastic.md,
// "Restart mode on etcd"), as torchrun's agent does it: the whole group
// stops and starts again from the newest checkpoint whenever any worker or
// any host fails.
//
// One generation, as every agent of the job runs it:
//  1. Meet. The agents are the participants of an EtcdElasticRendezvous
//     (comm/rendezvous/etcd_rendezvous.h) whose slots are their node
//     indexes, MIN..MAX of them; its round fixes generation g: the nodes by
//     rank. Node rank n's workers get ranks n*K .. n*K+K-1 of a world of
//     (nodes)*K. Rank 0's agent picks a free port on its host address
//     (DTRAIN_ADVERTISE_HOST, else DTRAIN_LISTEN_HOST unless a wildcard, else
//     127.0.0.1) and publishes host:port as its endpoint of g (a generation
//     that fails while forming is joined again); every agent reads it back
//     and gives it to its workers as DTRAIN_COORDINATOR (rank 0 hosts the
//     static rendezvous there, as under the local launcher).
//  2. Run. The K workers start under the local Launcher in restart mode
//     (the first failure stops all of them: SIGTERM, SIGKILL after
//     stop_grace), with this command line minus --rdzv, --nnodes and
//     --nproc-per-node, so they are plain launched workers that resume
//     from the newest checkpoint in the shared output folder (job.resume;
//     rank 0 alone writes it and holds its lock). Meanwhile a watcher
//     thread reads the group in etcd every poll interval
//     (EtcdElasticRendezvous::watch): another agent gave up on g, a node's
//     lease lapsed (its host died), or a new node waits while the group is
//     below MAX. Then it stops the local workers the same way.
//  3. End or restart. Every local worker exited 0: the agent marks the job
//     finished in etcd (the others then ignore its departure) and exits 0.
//     A local failure or a change seen in etcd: the agent joins generation
//     g+1 (a member of g, naming the nodes whose lease lapsed), which forms
//     with the nodes still alive (at least MIN; it waits up to the settle
//     time for alive ones, up to MAX) and starts again at 1. A restart
//     caused by a failure uses one of max_restarts (train.max_restarts,
//     --max-restarts); once they are used up the agent exits with the
//     failure's code (1 when the workers were killed) and one line naming
//     the budget and the failure. A restart only to admit a new node costs
//     nothing. An agent left out of g+1 (it was too slow) joins again as a
//     new node.
//
// Tuning (the agent's environment; tests use short ones):
// DTRAIN_RDZV_LEASE_TTL_S (10), DTRAIN_RDZV_SETTLE_MS (5000),
// DTRAIN_RDZV_JOIN_TIMEOUT_S (600: how long one meeting may take).
//
// Blocking: for the job's lifetime, bounded by `deadline`; every meeting by
// the join timeout. Errors: TimeoutError naming etcd's endpoint and what
// it awaited (a generation that does not form: too few nodes; etcd down);
// UsageError for a malformed tuning variable; what Launcher::run throws.
// Thread safety: one agent per process (the Launcher's signals).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "cli/etcd_agent.h"
#include "cli/etcd_agent_presence.h"
#include "cli/launcher.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::cli {

// `presence`: this agent's record in etcd (its node index, its lease;
// cli/etcd_agent_presence.h). An agent whose lease lapsed (its host was
// frozen past the TTL) is left out: the watcher stops its workers as soon as
// presence.lost() says so, the agent asks etcd (presence.check) after every
// meeting and every run, and it then returns exit code 1 with no restart
// (the caller says why). `base` as for run_etcd_agent (its argv is this
// agent's command line).
LaunchResult run_etcd_restart_agent(const AgentOptions& agent, AgentPresence& presence,
                                    int min_nodes, int max_nodes, LaunchOptions base,
                                    std::ostream& out, std::ostream& err, Logger& logger,
                                    Deadline deadline);

// `argv` without the agent's own flags (--rdzv, --nnodes, --nproc-per-node,
// as "--flag value" or "--flag=value"): the workers' command line.
std::vector<std::string> worker_argv(const std::vector<std::string>& argv);

}  // namespace dtrain::cli
