// The coordinator address of a job started by Slurm (srun), derived from the
// environment every task of a step shares, so that no one has to set
// DTRAIN_COORDINATOR by hand:
//   host: the first host of SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST,
//         else SLURM_NODELIST). Slurm places task 0 on the first node of its
//         step, and rank 0 hosts the rendezvous.
//   port: slurm_coordinator_port(SLURM_JOB_ID, SLURM_STEP_ID), below.
// The node lists are in Slurm's compressed hostlist syntax: comma-separated
// names, each with any number of bracketed range lists, e.g.
// "node[01-04,07],gpu3" or "rack[1-2]-n[1-2]" (a cartesian product, left
// to right: rack1-n1, rack1-n2, rack2-n1, rack2-n2). A range keeps the width
// of its lower bound when that has a leading zero ("[08-10]": 08 09 10).
//
// Everything here is a pure function of its arguments (the environment comes
// as a map; nothing calls getenv). Errors: ConfigError naming the variable,
// the list and the position of the problem (an unclosed '[', a ']' without
// '[', a nested '[', an empty name or range, a bound that is not a number, a
// range whose end is below its start, a list of more than kMaxHostlistHosts
// names). Thread safety: pure. Never blocks.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace dtrain::comm {

// The most names an expanded hostlist may hold (far beyond a job's nodes; a
// bound on memory for a malformed "[0-999999999]").
inline constexpr size_t kMaxHostlistHosts = 65536;

// Every host of `hostlist`, in order. `where` names the list in errors (the
// variable it came from).
std::vector<std::string> expand_hostlist(const std::string& hostlist, const std::string& where);

// The coordinator port of step `step_id` of job `job_id`:
//   kSlurmPortBase + (job_id mod 1500) * 8 + (step_id mod 8),
// in 20000..31999: unprivileged, and below Linux's ephemeral range
// (32768..60999), so it does not meet the ports the kernel hands to outgoing
// connections. Slurm numbers jobs consecutively, so two jobs running at the
// same time on one first node get the same port only if their ids differ by
// a multiple of 1500 (and their steps by a multiple of 8); then the second
// rank 0 fails to bind, saying so, and DTRAIN_COORDINATOR overrides.
inline constexpr int kSlurmPortBase = 20000;
int slurm_coordinator_port(uint64_t job_id, uint64_t step_id);

// A coordinator derived from a launcher's environment.
struct DerivedCoordinator {
  std::string address;  // "host:port"
  std::string source;   // the variables it came from, for the log line
};

// The Slurm coordinator, or nullopt when SLURM_JOB_ID or every node list is
// absent. SLURM_STEP_ID (else SLURM_STEPID, else 0) picks the step.
std::optional<DerivedCoordinator> derive_slurm_coordinator(
    const std::map<std::string, std::string>& env);

}  // namespace dtrain::comm
