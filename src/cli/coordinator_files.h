// The coordinator file of an mpirun launch (comm/rendezvous/coordinator_discovery.h)
// on a real file system: written through io's atomic files (write, fsync,
// rename), so a rank never reads half of it.
// Ownership: borrows the FileSystem, which outlives it. Thread safety: as
// the FileSystem. Errors: io::FileError naming the operation and the path
// (a file that vanishes while being read is "absent", not an error).
// Blocking: for the file system calls.
#pragma once

#include "comm/rendezvous/coordinator_discovery.h"
#include "io/file_system.h"

namespace dtrain::cli {

class FileSystemCoordinatorFiles final : public comm::CoordinatorFiles {
 public:
  explicit FileSystemCoordinatorFiles(io::FileSystem& fs) : fs_(fs) {}
  void write_atomic(const std::string& path, const std::string& data) override;
  std::optional<std::string> read(const std::string& path) override;
  void remove(const std::string& path) override;

 private:
  io::FileSystem& fs_;
};

}  // namespace dtrain::cli
