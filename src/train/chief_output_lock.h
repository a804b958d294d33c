// ChiefOutputLock: the output folder's lock (io::OutputLock) held by whichever
// worker is rank 0 of an elastic group whose generations live in etcd
// (docs/launching.md, "Output folder"). The hosts of such a job may share
// one output folder; only rank 0 writes checkpoints and the final weights
// there, and rank 0 changes when the group re-forms. So the lock follows the
// role, not the process: the Trainer calls follow(chief) when training
// starts and after every re-formation; follow(true) takes the lock if this
// process does not hold it yet, follow(false) releases it (cleanly: the
// record is emptied) if it does. The Trainer lets its last checkpoint write
// finish before it gives the role up.
//
// Taking it waits (io::OutputLock::acquire_waiting) up to options.wait,
// about twice the lease TTL: the previous rank 0 may be on a host frozen
// past its lease, which holds the flock until it runs again and its agent
// stops its workers. When the lock cannot be had within that bound,
// follow(true) throws: the worker ends with the error, the group re-forms
// without it (the elastic semantics, docs/elastic.md) and the next rank 0
// waits its own bound. Failing rather than training on without writing is
// deliberate: deferring would let a job run for hours with no checkpoint
// any host could resume from while it looks healthy; failing outlasts a
// holder that lets go within a few bounds and ends a job whose folder is in
// use by another run with that run named.
//
// Logs (warn, so that every rank shows them): each take and each release.
//
// Ownership: owns the lock while held; the logger must outlive the object.
// Thread safety: one thread (the trainer's). Errors: follow(true) throws
// UsageError naming the folder, the holder, the time waited and this
// worker's slot, FileError when the record cannot be written. Blocking:
// follow(true) up to options.wait when another process holds the lock.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <utility>

#include "core/log.h"
#include "io/output_lock.h"

namespace dtrain::train {

struct ChiefOutputLockOptions {
  std::string folder;                 // the job's output folder
  io::LockRecord record;              // this worker's record (pid, host, start, command line)
  std::chrono::milliseconds wait{0};  // bound on taking the lock once rank 0
  int slot = 0;                       // this worker's job-wide slot, for the messages
};

class ChiefOutputLock {
 public:
  ChiefOutputLock(ChiefOutputLockOptions options, Logger& logger)
      : options_(std::move(options)), logger_(logger) {}
  ChiefOutputLock(const ChiefOutputLock&) = delete;
  ChiefOutputLock& operator=(const ChiefOutputLock&) = delete;

  // Holds the lock when `chief`, not otherwise (see the header).
  void follow(bool chief);
  bool held() const { return lock_.has_value() && lock_->held(); }

 private:
  ChiefOutputLockOptions options_;
  Logger& logger_;
  std::optional<io::OutputLock> lock_;
};

}  // namespace dtrain::train
