// Meeting the coordinator: where rank 0 hosts the rendezvous
// (comm/rendezvous/rendezvous.h) and how every other rank learns its address.
// The one place the job's connections (connect_worker, connect_peer_link, the
// ps strategy) turn a LaunchInfo into "host:port".
//
// Three cases, by where LaunchInfo's coordinator came from
// (docs/launching.md):
//  - given (DTRAIN_COORDINATOR, --coordinator) or derived from Slurm's
//    environment (slurm_coordinator.h): rank 0 binds that port (on 0.0.0.0
//    when DTRAIN_LISTEN_HOST is a wildcard or the host is a name rather than
//    an address: a name cannot be bound), the others use the address as is;
//  - mpirun without one (LaunchInfo::discovery set): rank 0 binds an
//    ephemeral port on its listen host and publishes "host:port" (its
//    advertised host) in the file coordinator_file_path(folder, launch id),
//    written atomically through CoordinatorFiles; the others poll for that
//    file until the deadline. The file's name and its content both carry the
//    launch id, so a file left by another launch (or an earlier one) is never
//    used. Rank 0 removes it when its CoordinatorMeeting ends, which the
//    callers let happen once the rendezvous completed (every rank has read
//    it by then). The address is only a hint: the rendezvous frames are still
//    authenticated with the job secret (comm/wire/auth.h).
//  - neither: ConfigError saying to set DTRAIN_COORDINATOR.
//
// Ownership: a CoordinatorMeeting owns rank 0's RendezvousServer until
// take_server() hands it to whoever keeps it alive for the job. The
// CoordinatorFiles object in LaunchInfo::discovery is borrowed.
// Errors: CommError when rank 0 cannot bind (naming the address and, for a
// derived one, the override); TimeoutError (peer 0) naming the file and the
// launch id when it never appears; the file system's errors from
// CoordinatorFiles. Blocking: rank 0 never; the others poll the file (every
// 5..100 ms) at most until `deadline`.
// Thread safety: one meeting per thread; the free functions are pure.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "comm/rendezvous/launch_env.h"
#include "comm/rendezvous/rendezvous.h"
#include "comm/wire/auth.h"
#include "core/deadline.h"
#include "core/log.h"

namespace dtrain::comm {

// The file operations discovery needs, injected (the command line passes one
// over io's atomic files; tests pass an in-memory one). comm knows no io.
class CoordinatorFiles {
 public:
  virtual ~CoordinatorFiles() = default;
  // Replaces `path` by `data` at once: a reader sees the old file (or none)
  // or all of `data`, never part of it.
  virtual void write_atomic(const std::string& path, const std::string& data) = 0;
  // The content of `path`; nullopt when it does not exist.
  virtual std::optional<std::string> read(const std::string& path) = 0;
  // Removes `path`; no error when it does not exist.
  virtual void remove(const std::string& path) = 0;
};

// A name for this launch of an OpenMPI job, the same in every rank and
// different for every mpirun: PMIX_NAMESPACE (else OMPI_MCA_ess_base_jobid,
// else OMPI_MCA_orte_ess_jobid), followed by OMPI_MCA_orte_precondition_transports
// when present (128 random bits mpirun draws per launch: two launches whose
// job ids repeat, as they can when mpirun's pid is reused, still differ).
// Characters other than [A-Za-z0-9._-] become '_'. "" when none is set.
std::string mpirun_launch_id(const std::map<std::string, std::string>& env);

// "<folder>/.dtrain-coordinator-<launch id>".
std::string coordinator_file_path(const std::string& folder, const std::string& launch_id);

// The file's content: "dtrain coordinator 1\nlaunch <id>\naddress <host:port>\n".
std::string encode_coordinator_file(const std::string& launch_id, const std::string& address);
// The address in `content`, or nullopt when it is not a complete coordinator
// file of `launch_id` with a valid host:port.
std::optional<std::string> decode_coordinator_file(const std::string& content,
                                                   const std::string& launch_id);

class CoordinatorMeeting {
 public:
  // Rank 0: binds the RendezvousServer (and publishes its address when
  // discovering by file). Other ranks: learns the address (waiting for the
  // file until `deadline` when discovering by file).
  CoordinatorMeeting(const LaunchInfo& launch, const JobAuth& auth, Deadline deadline,
                     Logger& logger);
  // Rank 0: removes the published file (errors are logged, not thrown).
  ~CoordinatorMeeting();
  CoordinatorMeeting(const CoordinatorMeeting&) = delete;
  CoordinatorMeeting& operator=(const CoordinatorMeeting&) = delete;

  // Where to register: "host:port".
  const std::string& address() const { return address_; }
  // Rank 0's server (null on other ranks, or once taken).
  std::unique_ptr<RendezvousServer> take_server() { return std::move(server_); }

 private:
  void host(const LaunchInfo& launch, const JobAuth& auth, Logger& logger);
  void await_file(const LaunchInfo& launch, Deadline deadline, Logger& logger);

  std::string address_;
  std::unique_ptr<RendezvousServer> server_;
  CoordinatorFiles* files_ = nullptr;  // LaunchInfo::discovery's: outlives the job's connections
  std::string published_path_;         // rank 0, discovering by file: the file to remove
  Logger* logger_ = nullptr;           // the caller's, alive for the meeting
};

}  // namespace dtrain::comm
