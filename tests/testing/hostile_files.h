// Paths that a reader of whole files must refuse at once (issue #18): a
// character device that never ends (/dev/zero) or is random (/dev/urandom),
// a FIFO without a writer (an open that blocks would hang the test until its
// timeout), a directory, and a regular file one byte over a size limit
// (sparse: it takes no disk space).
//
// Each comes with the reason io::FileSystem::read_file() gives for it, the
// text after "read <path>: " or after "cannot read <what> '<path>': ".
// Ownership: the files live in the caller's TempDir. Throws
// std::system_error when one cannot be created.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "testing/fault_fs.h"

namespace dtrain::testing {

struct HostilePath {
  std::string path;
  std::string reason;
};

// /dev/zero, /dev/urandom, "<dir>/fifo", "<dir>/folder" and "<dir>/big"
// (limit + 1 bytes, all holes). Names already in `dir` are reused.
std::vector<HostilePath> hostile_paths(const TempDir& dir, uint64_t limit);

}  // namespace dtrain::testing
