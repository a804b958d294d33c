// ElasticMembership: what the Trainer needs from an elastic group of workers
// (docs/elastic.md). The group can lose members and gain new ones while
// training goes on; the trainer only has to re-form it at the right moments
// and continue from the position the group agrees on. A strategy that runs
// in an elastic group (strategy/elastic_allreduce.h) returns its membership
// from Strategy::elastic(); after every re-formation it answers model(),
// rank() and world_size() for the new group.
//
// The trainer calls, on its one thread:
//  - joined_running_group() once at the start of fit(): true when this
//    process joined a group that had already trained (a replacement worker);
//    the group's model and optimizer state are then loaded and `position`
//    is the group's, so no checkpoint is read;
//  - reform_due() after each update except the last (collective over the
//    group): whether the group re-forms now, because a new worker waits to
//    join or because a member failed during this check;
//  - reform() after a CommError escaped a step, or when reform_due() said
//    so: blocks until a new group has formed and agreed on its state (its
//    rank 0's model, optimizer state and position, which it sets).
// Errors: reform() throws CommError/TimeoutError when no group can be
// formed before the implementation's deadline, JobFinished when the job
// finished training without this worker, and LeftGroup when the group went
// on without it (it was silent past the heartbeat timeout).
#pragma once

#include <cstdint>
#include <string>

#include "core/error.h"

namespace dtrain::strategy {

// Where training stands: updates applied, the epoch in progress and the
// batches of it already trained on.
struct TrainingPosition {
  int64_t step = 0;
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;
};

// The job finished training while this worker waited to join, or while it
// was away: nothing is left for it to do. Not a failure.
class JobFinished : public Error {
 public:
  using Error::Error;
};

// The group dropped this worker (it was silent past the heartbeat timeout,
// e.g. stopped) and trains on without it. Not a failure of the job.
class LeftGroup : public Error {
 public:
  using Error::Error;
};

class ElasticMembership {
 public:
  virtual ~ElasticMembership() = default;
  virtual bool joined_running_group(TrainingPosition& position) = 0;
  virtual bool reform_due() = 0;
  virtual void reform(TrainingPosition& position, const std::string& cause) = 0;
};

}  // namespace dtrain::strategy
