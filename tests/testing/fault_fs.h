// File-system helpers for tests: TempDir, a fresh folder removed with its
// contents at scope exit, and FaultInjectingFileSystem, an io::FileSystem over a real one that
// fails or "crashes" at a chosen operation and can then simulate a power loss, to test crash safety
// of file writers (leveldb's db/fault_injection_test.cc model).
//
// Two kinds of fault:
//  - fail_nth(op, n): the n-th call of `op` from now throws io::FileError
//    ("injected fault"), as ENOSPC or EIO would; the process lives on and
//    later calls work.
//  - crash_at(n): the n-th mutating call from now (write, sync, directory
//    sync, rename, remove, create directories) is where the process dies. A
//    write there leaves only the first half of its bytes; any other operation
//    is not performed. It throws SimulatedCrash, and so does every later call
//    until power_loss() or restart().
//
// power_loss() then rewinds what was not durable, as after losing power:
//  - a file written but not fsynced since keeps only the first half of the
//    bytes written to it (a torn write);
//  - creations, renames and removals not followed by an fsync of their
//    directory are undone, newest first.
// Files that existed before this object saw them count as durable.
//
// Ownership: holds a reference to `base`, which the test keeps alive.
// Thread safety: none; use from one thread. Throws SimulatedCrash (not a
// dtrain::Error, so no library code catches it) and io::FileError.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/file_system.h"

namespace dtrain::testing {

// A fresh directory under $TMPDIR (or /tmp), removed recursively by the
// destructor. Throws std::system_error when it cannot be created.
class TempDir {
 public:
  TempDir();
  // A fresh directory under `base` instead (e.g. /dev/shm, where fsync is
  // free).
  explicit TempDir(const std::string& base);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // path() + "/" + name
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The simulated death of the process at an injected crash point.
class SimulatedCrash : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class FaultInjectingFileSystem final : public io::FileSystem {
 public:
  enum class Op {
    kRead,
    kWrite,
    kSync,
    kSyncDirectory,
    kRename,
    kRemove,
    kList,
    kCreateDirectories
  };

  explicit FaultInjectingFileSystem(io::FileSystem& base) : base_(base) {}

  void fail_nth(Op op, int64_t n);
  void crash_at(int64_t n);
  // Mutating calls seen so far (to enumerate crash points of a procedure).
  int64_t mutations() const { return mutations_; }
  bool crashed() const { return crashed_; }
  // Rewinds non-durable changes (see above) and clears the crash.
  void power_loss();
  // Clears the crash and forgets pending state, keeping every change (a
  // process crash without power loss).
  void restart();

  std::string read_file(const std::string& path, uint64_t max_bytes) override;
  void write_file(const std::string& path, std::string_view data) override;
  void sync_file(const std::string& path) override;
  void sync_directory(const std::string& dir) override;
  void rename_file(const std::string& from, const std::string& to) override;
  void remove_file(const std::string& path) override;
  bool exists(const std::string& path) override;
  std::vector<std::string> list_directory(const std::string& dir) override;
  void create_directories(const std::string& dir) override;

 private:
  // A directory change not yet made durable by fsync of its directory.
  struct PendingEntry {
    enum class Kind { kCreate, kRename, kRemove } kind;
    std::string path;                   // created/removed path, or the rename target
    std::string from;                   // rename source
    std::optional<std::string> before;  // rename target's or removed file's old content
  };

  // Counts the call; throws for an injected failure or crash. Returns true
  // when this mutating call is the crash point.
  bool enter(Op op, const std::string& path);
  std::optional<std::string> content_of(const std::string& path);

  io::FileSystem& base_;  // the test's real file system, outlives this object
  std::map<Op, int64_t> fail_countdown_;
  int64_t crash_countdown_ = 0;
  int64_t mutations_ = 0;
  bool crashed_ = false;
  std::map<std::string, std::string> unsynced_;  // path -> bytes written since the last fsync
  std::vector<PendingEntry> pending_;
};

}  // namespace dtrain::testing
