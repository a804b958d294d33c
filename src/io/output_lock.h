// OutputLock: one run at a time per output folder.
//
// Two jobs writing the same folder would interleave metrics and overwrite
// each other's checkpoints and weights. A run therefore holds an advisory
// lock on "<dir>/.dtrain.lock" for its whole life: acquire() creates the
// folder if needed, opens the lock file (O_CLOEXEC, so processes the run
// spawns do not inherit it), takes flock(LOCK_EX | LOCK_NB) and writes the
// holder's record (pid, host, start time, command line), fsynced. A second
// run's acquire() fails at once (it never waits) with a UsageError that names
// the folder and the holder:
//   output folder 'out' is in use by another dtrain run: pid 4242 on host
//   node7, started 2024-05-01T12:00:00Z, command 'dtrain train job.toml';
//   wait for it to finish or pass another --output
//
// Stale locks: a flock dies with the last descriptor of its process, so a
// holder that was killed (SIGKILL, power loss of a client) leaves a file that
// the next run simply locks again; no pid check, no timeout. The record such
// a holder left behind is reported through the Logger (warn) before it is
// replaced. A clean release() empties the record first, so a normal end
// leaves nothing to report. The file itself is never removed: removing it
// while another process has it open would let two runs lock different files.
//
// File systems: local file systems support flock. On NFS, Linux clients
// emulate flock with POSIX byte-range locks (NLM or NFSv4 locking), so the
// lock also works between machines sharing an NFS export. Other network file
// systems (some FUSE mounts, older CIFS setups) may grant every lock: there
// the protection is not guaranteed.
//
// Ownership: move-only RAII; the lock is held from acquire() until release()
// or destruction. A fork()ed child without exec shares the descriptor and
// thus the lock. Thread safety: one OutputLock per thread; distinct objects
// on distinct folders are independent. Errors: UsageError for a held lock or
// a folder that cannot be created or locked (naming the folder and the
// reason); FileError when the record cannot be written (the lock is then not
// held). Blocking: acquire() never waits for the lock (acquire_waiting() does, up to
// its bound); file I/O and one fsync.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/log.h"

namespace dtrain::io {

// Who holds (or held) the lock; the content of the lock file.
struct LockRecord {
  int64_t pid = 0;
  std::string host;
  std::string started;       // UTC, ISO 8601: "2024-05-01T12:00:00Z"
  std::string command_line;  // for people: "dtrain train job.toml --workers 4"

  bool operator==(const LockRecord&) const = default;
};

// The record of this process: getpid(), gethostname(), `started` in UTC ISO
// 8601 and the caller's command line (library code does not read argv).
LockRecord this_process_record(std::string command_line,
                               std::chrono::system_clock::time_point started);

// "2024-05-01T12:00:00Z" (seconds, UTC).
std::string format_utc(std::chrono::system_clock::time_point time);

// The file's text: four "key=value" lines (pid, host, started, command);
// newlines in values are replaced by spaces. decode_lock_record() returns
// nullopt for text that is not such a record (empty: released cleanly).
std::string encode_lock_record(const LockRecord& record);
std::optional<LockRecord> decode_lock_record(std::string_view text);

class OutputLock {
 public:
  // The lock file's name inside the folder.
  static constexpr std::string_view kFileName = ".dtrain.lock";

  // Locks `dir` for `record`'s process (see above). `logger` receives the
  // warning about a previous holder that ended without releasing the lock;
  // it is used only during this call.
  static OutputLock acquire(const std::string& dir, const LockRecord& record, Logger& logger);
  // As acquire(), but a lock held by another process is tried again every
  // 0.2 s for up to `wait` (one warning naming the holder when it first
  // waits); then the UsageError names the holder and the time waited. For a
  // group's new rank 0 whose predecessor may still hold the lock for a
  // moment (its host frozen: it lets go once it runs again and is stopped).
  // A `wait` of 0 is acquire(). Blocking: up to `wait`.
  static OutputLock acquire_waiting(const std::string& dir, const LockRecord& record,
                                    Logger& logger, std::chrono::milliseconds wait);

  OutputLock(OutputLock&& other) noexcept;
  OutputLock& operator=(OutputLock&& other) noexcept;
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  ~OutputLock();

  bool held() const { return fd_ >= 0; }
  // "<dir>/.dtrain.lock"
  const std::string& path() const { return path_; }
  // Empties the record and releases the lock; a no-op when not held. Never
  // throws (a failure to empty the record only leaves it for the next run to
  // report).
  void release() noexcept;

 private:
  OutputLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  // The lock, or nullopt when another process holds it (`holder_text` then
  // describes it); throws as acquire() for every other failure.
  static std::optional<OutputLock> try_acquire(const std::string& dir, const LockRecord& record,
                                               Logger& logger, std::string& holder_text);

  std::string path_;
  int fd_ = -1;
};

}  // namespace dtrain::io
