// PrivateDir: a folder of this process's own (mkdtemp, mode 0700) under
// TMPDIR or /tmp, removed with what it holds when the object goes. The
// launcher's run folder (cli/job_launch.h, DTRAIN_RUN_DIR) and the etcd
// agent's socket folder (cli/etcd_agent.h, DTRAIN_SOCKET_DIR) are ones: the
// ipc sockets of the processes they start bind there, so a killed process
// leaves nothing behind once the run ends.
//
// Ownership: owns the folder. A resource type (no copies). Not thread-safe.
// Throws std::system_error naming the pattern when mkdtemp fails. Never
// blocks beyond the file system.
#pragma once

#include <string>

namespace dtrain::cli {

class PrivateDir {
 public:
  // A folder "<tmpdir>/<prefix>-XXXXXX"; /tmp when `tmpdir` is empty or so
  // deep that a socket path below it might not fit sockaddr_un. `what`
  // names the folder in the error ("the run's socket folder").
  PrivateDir(const std::string& tmpdir, const std::string& prefix, const std::string& what);
  ~PrivateDir();
  PrivateDir(const PrivateDir&) = delete;
  PrivateDir& operator=(const PrivateDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace dtrain::cli
