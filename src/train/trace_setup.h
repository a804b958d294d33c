// The job's timeline writer (train.trace, train.trace_steps): one
// obs::TraceWriter per worker process, or none.
//
// Ownership: the caller owns the writer and keeps it alive until the
// strategy and trainer that record into it are destroyed. Errors: io::
// FileError when the file cannot be created; UsageError for bad trace_steps
// (already checked when the job file was read).
#pragma once

#include <cstdint>
#include <memory>

#include "obs/trace_writer.h"
#include "train/job_config.h"

namespace dtrain::train {

// Null when job.train.trace is empty. "auto" writes
// <output>/trace/rank-<rank>.json, another value that path (with
// "-rank<rank>" before the extension when workers > 1).
std::unique_ptr<obs::TraceWriter> open_trace(const JobConfig& job, int64_t rank, int64_t workers);

}  // namespace dtrain::train
