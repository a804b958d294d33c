// FileSystem: the few file operations dtrain's writers and readers need, in
// the spirit of leveldb's Env, so that tests can substitute a file system
// that fails or "crashes" at a chosen step (tests/testing/fault_fs.h).
//
// Operations work on whole files: write_file() creates or truncates a file
// and writes all bytes but does NOT make them durable; sync_file() and
// sync_directory() do (fsync). Crash-safe replacement of a file is built on
// these in exactly one place, io/atomic_file.h; nothing else renames.
//
// Reading is bounded: read_file() reads only regular files, never more than
// the caller's limit, so that a path naming /dev/zero, /dev/urandom, a FIFO
// or a directory fails at once with a clear error instead of growing memory
// without end or blocking forever (the open is non-blocking, so a FIFO
// without a writer does not stall it).
//
// Ownership: callers hold a FileSystem by reference; default_file_system()
// returns a process-wide stateless POSIX implementation that lives forever.
// Thread safety: the POSIX implementation is safe to call from any thread
// (it keeps no state); test implementations document their own.
// Errors: every failed operation throws FileError naming the operation, the
// path and the system's reason. Blocking: calls block for the duration of
// the system call (disk I/O); there is no deadline.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace dtrain::io {

// A file operation failed: "write /x/y: No space left on device".
class FileError : public Error {
 public:
  FileError(std::string operation, std::string path, const std::string& reason);
  const std::string& operation() const { return operation_; }
  const std::string& path() const { return path_; }
  const std::string& reason() const { return reason_; }

 private:
  std::string operation_;
  std::string path_;
  std::string reason_;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // The whole content of the regular file `path`, at most `max_bytes` long.
  // FileError (operation "read") when `path` is not a regular file ("not a
  // regular file (it is a FIFO)": also a character device, a directory...),
  // when its size exceeds `max_bytes` (naming both sizes), or when it shrinks
  // while being read. Reads exactly the size fstat reports when it opens the
  // file: bytes appended meanwhile are not read.
  virtual std::string read_file(const std::string& path, uint64_t max_bytes) = 0;
  // Creates or truncates `path` and writes `data`; not durable until sync_file().
  virtual void write_file(const std::string& path, std::string_view data) = 0;
  // fsync(2) of an existing file's data and metadata.
  virtual void sync_file(const std::string& path) = 0;
  // fsync(2) of a directory, making renames, creations and removals in it durable.
  virtual void sync_directory(const std::string& dir) = 0;
  // rename(2): atomically replaces `to` when it exists; both in one file system.
  virtual void rename_file(const std::string& from, const std::string& to) = 0;
  virtual void remove_file(const std::string& path) = 0;
  // True when `path` names an existing file or directory.
  virtual bool exists(const std::string& path) = 0;
  // Names (not paths) of the entries in `dir`, sorted, without "." and "..".
  virtual std::vector<std::string> list_directory(const std::string& dir) = 0;
  // mkdir -p; succeeds when the directory already exists.
  virtual void create_directories(const std::string& dir) = 0;
};

// The POSIX implementation (stateless; valid for the whole process lifetime).
FileSystem& default_file_system();

// Size limits of the files dtrain reads whole (a bound against reading a
// huge or endless file, not a promise that one that size fits in memory):
// 16 GiB for data (IDX, CSV), 64 GiB for models (safetensors, checkpoints).
inline constexpr uint64_t kMaxDataFileBytes = uint64_t{16} << 30;
inline constexpr uint64_t kMaxModelFileBytes = uint64_t{64} << 30;
// No limit: for tests and for files this process wrote itself.
inline constexpr uint64_t kUnlimitedBytes = std::numeric_limits<uint64_t>::max();

// "dir/name" with exactly one separator ("name" when dir is empty).
std::string join_path(std::string_view dir, std::string_view name);
// The directory part of `path` ("." when it has none).
std::string parent_directory(std::string_view path);
// The last component of `path`.
std::string base_name(std::string_view path);

// Reads an input file for a parser: fs.read_file(path, max_bytes), but a
// failure throws DataError naming `what` (a few words: "job file", "CSV
// file"), the path and the reason, the kind readers of datasets and model
// files report:
//   cannot read CSV file 'x.csv': No such file or directory
//   cannot read job file '/dev/zero': not a regular file (it is a character device)
//   cannot read weights file 'w': 2000 bytes, over the limit of 1000 bytes
std::string read_input_file(FileSystem& fs, const std::string& path, uint64_t max_bytes,
                            std::string_view what);

// read_input_file() on default_file_system(): the bounded read of a regular
// file for code that does not take a FileSystem (the job file, --weights).
std::string read_regular_file(const std::string& path, uint64_t max_bytes, std::string_view what);

}  // namespace dtrain::io
