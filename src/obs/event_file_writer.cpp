#include "obs/event_file_writer.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>

#include "io/file_system.h"
#include "obs/tensorboard_event.h"
#include "obs/tfrecord.h"

namespace dtrain::obs {

namespace {

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace

double unix_seconds_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

EventFileWriter::EventFileWriter(const std::string& folder, double wall_time) {
  io::default_file_system().create_directories(folder);
  const std::string stem =
      fmt::format("events.out.tfevents.{}.{}.{}.", static_cast<int64_t>(std::floor(wall_time)),
                  host_name(), static_cast<int64_t>(getpid()));
  for (int n = 0; fd_ < 0; ++n) {
    path_ = io::join_path(folder, stem + std::to_string(n));
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) throw io::FileError("create", path_, std::strerror(errno));
  }
  add_event(encode_file_version_event(wall_time));
  try {
    flush();
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

EventFileWriter::~EventFileWriter() {
  try {
    flush();
  } catch (const Error&) {  // the caller who cares called flush() first
  }
  ::close(fd_);
}

void EventFileWriter::add_event(const std::string& event) { append_tfrecord(pending_, event); }

void EventFileWriter::add_scalar(std::string_view tag, float value, int64_t step,
                                 double wall_time) {
  add_event(encode_scalar_event(tag, value, step, wall_time));
}

void EventFileWriter::add_histogram(std::string_view tag, std::span<const float> values,
                                    int64_t step, double wall_time) {
  add_event(encode_histogram_event(tag, make_histogram(values), step, wall_time));
}

void EventFileWriter::flush() {
  size_t done = 0;
  while (done < pending_.size()) {
    const ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      // The file may now end in a torn record; readers stop there, so
      // records added later are lost too. Drop the rest instead of
      // retrying it forever.
      const std::string reason = std::strerror(errno);
      pending_.clear();
      throw io::FileError("write", path_, reason);
    }
    done += static_cast<size_t>(n);
    bytes_written_ += static_cast<uint64_t>(n);
  }
  pending_.clear();
}

}  // namespace dtrain::obs
