#include "train/checkpoint_writer.h"

#include <utility>

#include "core/error.h"

namespace dtrain::train {

CheckpointWriter::CheckpointWriter(std::string dir, int64_t keep_last, io::FileSystem& fs,
                                   Logger& logger, TraceSink* trace)
    : dir_(std::move(dir), keep_last, fs, logger),
      logger_(logger),
      trace_(trace),
      thread_([this](std::stop_token stop) { run(std::move(stop)); }) {}

CheckpointWriter::~CheckpointWriter() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
  if (error_) {
    try {
      std::rethrow_exception(error_);
    } catch (const std::exception& e) {
      logger_.warn("checkpoint writer: the last checkpoint was not written: {}", e.what());
    }
  }
}

void CheckpointWriter::drain(std::unique_lock<std::mutex>& lock) {
  changed_.wait(lock, [this] { return !queued_.has_value(); });
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

void CheckpointWriter::submit(io::Checkpoint snapshot) {
  std::unique_lock lock(mutex_);
  drain(lock);
  queued_.emplace(std::move(snapshot));
  lock.unlock();
  changed_.notify_all();
}

void CheckpointWriter::wait() {
  std::unique_lock lock(mutex_);
  drain(lock);
}

int64_t CheckpointWriter::written() const {
  std::lock_guard lock(mutex_);
  return written_;
}

void CheckpointWriter::run(std::stop_token stop) {
  if (trace_ != nullptr) trace_->name_thread("checkpoint");
  std::unique_lock lock(mutex_);
  while (true) {
    // A stop request still lets a queued snapshot be written first.
    changed_.wait(lock, stop, [this] { return queued_.has_value(); });
    if (!queued_) return;
    // The snapshot stays in queued_ (so submitters wait) while the lock is
    // released: only this thread touches it until it is reset below.
    const io::Checkpoint& snapshot = *queued_;
    lock.unlock();
    std::exception_ptr error;
    try {
      TraceSpan span(trace_, "checkpoint", "io");
      span.arg("step", snapshot.step);
      dir_.write(snapshot);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    queued_.reset();
    if (error) {
      error_ = std::move(error);
    } else {
      ++written_;
    }
    changed_.notify_all();
  }
}

}  // namespace dtrain::train
