// CheckpointWriter: writes training checkpoints on a background thread, so
// that the training thread pays only for the in-memory snapshot, not for the
// disk (encoding, write, fsync, rename, pruning).
//
// One write at a time: submit() hands a snapshot to the writer thread and
// returns at once, unless the previous snapshot is still being written; then
// it first waits for that write to finish. So at most one snapshot is held
// besides the live model (memory bound: one copy of the state), and
// checkpoints reach the disk in submission order. A caller that submits
// after every step therefore trains at most one write ahead of the disk.
//
// Errors of a background write (CheckpointError from io::CheckpointDirectory,
// or anything else it throws) are kept and rethrown on the caller's thread by
// the next submit() or wait(); a failed write is reported once.
//
// Ownership: owns its std::jthread and the queued snapshot; the snapshot must
// own its tensors (StateDict::clone()), since training goes on while it is
// written. `fs` and `logger` are the creator's and must outlive the writer.
// Thread safety: submit() and wait() are called from one thread (the training
// thread); the writer thread is internal.
// Blocking: submit() blocks while the previous write runs; wait() until the
// last submitted write is on disk; neither has a deadline (a local file
// write). The destructor finishes the write in progress (never leaving a
// partial file behind a name), then joins; an error it can no longer rethrow
// is logged as a warning.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "core/log.h"
#include "core/trace.h"
#include "io/checkpoint.h"
#include "io/file_system.h"

namespace dtrain::train {

class CheckpointWriter {
 public:
  // Checkpoints go to io::CheckpointDirectory(dir, keep_last, fs, logger);
  // keep_last >= 1 (UsageError otherwise).
  // `trace` (may be null; must outlive this writer) records each write as
  // an "io" span "checkpoint" on the writer thread's track.
  CheckpointWriter(std::string dir, int64_t keep_last, io::FileSystem& fs, Logger& logger,
                   TraceSink* trace = nullptr);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Waits for the previous write, rethrows its error if it failed, then
  // queues `snapshot` and returns without waiting for it.
  void submit(io::Checkpoint snapshot);
  // Waits until every submitted checkpoint is written; rethrows the error
  // of a write that failed and was not reported yet.
  void wait();
  // Checkpoints written successfully so far.
  int64_t written() const;

 private:
  void run(std::stop_token stop);
  // Waits (under `lock`) until no snapshot is queued or being written, then
  // rethrows a kept error.
  void drain(std::unique_lock<std::mutex>& lock);

  io::CheckpointDirectory dir_;  // used only by the writer thread after construction
  Logger& logger_;               // the creator's, outlives this object
  TraceSink* trace_;             // the creator's (or null), outlives this object
  mutable std::mutex mutex_;
  std::condition_variable_any changed_;
  std::optional<io::Checkpoint> queued_;  // submitted, not yet finished
  std::exception_ptr error_;              // of a finished write, until rethrown
  int64_t written_ = 0;
  std::jthread thread_;  // last: stopped and joined before the state above dies
};

}  // namespace dtrain::train
