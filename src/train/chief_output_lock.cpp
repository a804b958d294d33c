#include "train/chief_output_lock.h"

#include <fmt/format.h>

#include "core/error.h"

namespace dtrain::train {

void ChiefOutputLock::follow(bool chief) {
  if (chief == held()) return;
  if (!chief) {
    lock_->release();
    lock_.reset();
    logger_.warn("slot {} is no longer rank 0: released the lock of output folder '{}'",
                 options_.slot, options_.folder);
    return;
  }
  try {
    lock_.emplace(
        io::OutputLock::acquire_waiting(options_.folder, options_.record, logger_, options_.wait));
  } catch (const UsageError& e) {
    throw UsageError(fmt::format(
        "slot {} became rank 0 of its elastic group but cannot write its output: {}; this "
        "worker stops and the group re-forms without it",
        options_.slot, e.what()));
  }
  logger_.warn("slot {} is rank 0: holds the lock of output folder '{}'", options_.slot,
               options_.folder);
}

}  // namespace dtrain::train
