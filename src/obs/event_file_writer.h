// EventFileWriter: one TensorBoard event file, appended to as training goes.
//
// The constructor creates `folder` (mkdir -p) and in it the new file
// "events.out.tfevents.<unix seconds>.<hostname>.<pid>.<n>", n being the
// smallest number from 0 that names no existing file (created with O_EXCL,
// so two writers in one process and second get distinct files without any
// shared counter), and writes the file-version event ("brain.Event:2").
// add_scalar() and add_histogram() encode an event (obs/tensorboard_event.h)
// framed as a TFRecord (obs/tfrecord.h) into a buffer; flush() hands the
// buffer to the kernel with write(2), so TensorBoard, which polls the
// folder, sees every flushed event while the file is still being written.
// The destructor flushes what is left (swallowing a failure: call flush()
// first to see it). TensorBoard orders the files of one folder by name and
// reads each to its end, which is why the name starts with the time.
//
// Durability: flush() is not fsync(). A process crash loses only what was
// not flushed; a machine crash may lose the file's recent writes. A write
// interrupted part-way leaves at most a torn last record, which readers
// (TensorBoard, tests/obs/read_tfevents.py) skip; every earlier record
// stays readable.
//
// Ownership: owns its file descriptor (closed by the destructor); not
// copyable. Thread safety: none; one thread at a time. Errors: io::FileError
// (a dtrain::Error) naming the file or folder and the system's reason, from
// the constructor (folder not creatable, file not creatable) and flush()
// (write failed, e.g. disk full: the file may then end in a torn record, and
// readers ignore what follows it). Blocking: flush() blocks for the write(2)
// calls (no deadline; local disk I/O).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace dtrain::obs {

class EventFileWriter {
 public:
  // `wall_time`: seconds since the Unix epoch, for the file name and the
  // first event (the caller's clock, so tests can fix it).
  EventFileWriter(const std::string& folder, double wall_time);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  void add_scalar(std::string_view tag, float value, int64_t step, double wall_time);
  void add_histogram(std::string_view tag, std::span<const float> values, int64_t step,
                     double wall_time);
  // Writes the buffered records to the file (not fsync, see above).
  void flush();

  const std::string& path() const { return path_; }
  // Bytes written to the file by flush() so far.
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  void add_event(const std::string& event);
  std::string path_;
  int fd_ = -1;
  std::string pending_;
  uint64_t bytes_written_ = 0;
};

// Seconds since the Unix epoch, now (std::chrono::system_clock).
double unix_seconds_now();

}  // namespace dtrain::obs
