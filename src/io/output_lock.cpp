#include "io/output_lock.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <thread>
#include <utility>

#include "core/error.h"
#include "io/file_system.h"

namespace dtrain::io {

namespace {

// A record is four short lines; anything longer is not one of ours.
constexpr size_t kMaxRecordBytes = 64 * 1024;
constexpr auto kWaitPoll = std::chrono::milliseconds(200);

std::string one_line(std::string_view value) {
  std::string out(value);
  std::replace(out.begin(), out.end(), '\n', ' ');
  std::replace(out.begin(), out.end(), '\r', ' ');
  return out;
}

// The whole (small) content of the open file `fd`; "" when unreadable.
std::string read_record_text(int fd) {
  std::string text(kMaxRecordBytes, '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::pread(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  text.resize(done);
  return text;
}

void write_all_at_start(int fd, std::string_view text, const std::string& path) {
  if (::ftruncate(fd, 0) != 0) throw FileError("write", path, std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n =
        ::pwrite(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw FileError("write", path, std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) throw FileError("fsync", path, std::strerror(errno));
}

std::string describe_holder(const LockRecord& r) {
  return fmt::format("pid {} on host {}, started {}, command '{}'", r.pid,
                     r.host.empty() ? "?" : r.host, r.started.empty() ? "?" : r.started,
                     r.command_line.empty() ? "?" : r.command_line);
}

// Closes a descriptor unless released to the lock object.
class OpenFile {
 public:
  explicit OpenFile(int fd) : fd_(fd) {}
  ~OpenFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

}  // namespace

std::string format_utc(std::chrono::system_clock::time_point time) {
  const std::time_t seconds =
      std::chrono::system_clock::to_time_t(std::chrono::floor<std::chrono::seconds>(time));
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", utc.tm_year + 1900, utc.tm_mon + 1,
                     utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec);
}

LockRecord this_process_record(std::string command_line,
                               std::chrono::system_clock::time_point started) {
  LockRecord record;
  record.pid = ::getpid();
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) == 0) record.host = host;
  record.started = format_utc(started);
  record.command_line = std::move(command_line);
  return record;
}

std::string encode_lock_record(const LockRecord& record) {
  return fmt::format("pid={}\nhost={}\nstarted={}\ncommand={}\n", record.pid, one_line(record.host),
                     one_line(record.started), one_line(record.command_line));
}

std::optional<LockRecord> decode_lock_record(std::string_view text) {
  LockRecord record;
  bool pid = false, host = false, started = false, command = false;
  while (!text.empty()) {
    const size_t end = std::min(text.find('\n'), text.size());
    const std::string_view line = text.substr(0, end);
    text.remove_prefix(std::min(end + 1, text.size()));
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    const std::string_view key = line.substr(0, eq);
    const std::string_view value = line.substr(eq + 1);
    if (key == "pid") {
      const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), record.pid);
      if (ec != std::errc() || ptr != value.data() + value.size() || record.pid <= 0) {
        return std::nullopt;
      }
      pid = true;
    } else if (key == "host") {
      record.host = value;
      host = true;
    } else if (key == "started") {
      record.started = value;
      started = true;
    } else if (key == "command") {
      record.command_line = value;
      command = true;
    }  // other keys: from a newer version, ignored
  }
  if (!(pid && host && started && command)) return std::nullopt;
  return record;
}

std::optional<OutputLock> OutputLock::try_acquire(const std::string& dir, const LockRecord& record,
                                                  Logger& logger, std::string& holder_text) {
  try {
    default_file_system().create_directories(dir);
  } catch (const FileError& e) {
    throw UsageError(e.path() == dir
                         ? fmt::format("cannot create the output folder '{}': {}", dir, e.reason())
                         : fmt::format("cannot create the output folder '{}': {} (creating '{}')",
                                       dir, e.reason(), e.path()));
  }
  const std::string path = join_path(dir, kFileName);
  OpenFile file(::open(path.c_str(), O_RDWR | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0644));
  if (file.get() < 0) {
    throw UsageError(fmt::format("cannot lock the output folder '{}': open {}: {}", dir, path,
                                 std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(file.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw UsageError(
        fmt::format("cannot lock the output folder '{}': {} is not a regular file", dir, path));
  }
  int rc = 0;
  do {
    rc = ::flock(file.get(), LOCK_EX | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    if (err != EWOULDBLOCK) {
      throw UsageError(fmt::format("cannot lock the output folder '{}': flock {}: {}", dir, path,
                                   std::strerror(err)));
    }
    const std::optional<LockRecord> holder = decode_lock_record(read_record_text(file.get()));
    holder_text = holder ? describe_holder(*holder) : "its record is not written yet";
    return std::nullopt;
  }
  // Locked. A record still here belongs to a run that ended without release().
  const std::string previous = read_record_text(file.get());
  if (!previous.empty()) {
    const std::optional<LockRecord> old = decode_lock_record(previous);
    if (old) {
      logger.warn(
          "output folder '{}': the run that held it ({}) is no longer running and did not "
          "release it (killed or crashed); taking the folder over",
          dir, describe_holder(*old));
    } else {
      logger.warn("output folder '{}': replacing an unreadable lock record in {}", dir, path);
    }
  }
  write_all_at_start(file.get(), encode_lock_record(record), path);
  return OutputLock(path, file.release());
}

OutputLock OutputLock::acquire(const std::string& dir, const LockRecord& record, Logger& logger) {
  std::string holder;
  std::optional<OutputLock> lock = try_acquire(dir, record, logger, holder);
  if (!lock) {
    throw UsageError(fmt::format(
        "output folder '{}' is in use by another dtrain run: {}; wait for it to finish or pass "
        "another --output",
        dir, holder));
  }
  return std::move(*lock);
}

OutputLock OutputLock::acquire_waiting(const std::string& dir, const LockRecord& record,
                                       Logger& logger, std::chrono::milliseconds wait) {
  if (wait.count() <= 0) return acquire(dir, record, logger);
  const auto until = std::chrono::steady_clock::now() + wait;
  std::string holder;
  bool told = false;
  while (true) {
    std::optional<OutputLock> lock = try_acquire(dir, record, logger, holder);
    if (lock) return std::move(*lock);
    if (std::chrono::steady_clock::now() >= until) break;
    if (!told) {
      logger.warn("output folder '{}' is held by {}; waiting up to {} ms for it", dir, holder,
                  wait.count());
      told = true;
    }
    std::this_thread::sleep_for(kWaitPoll);
  }
  throw UsageError(fmt::format(
      "output folder '{}' is still in use by another dtrain run after waiting {} ms: {}; a "
      "process that holds it frozen (SIGSTOP, a hung host) keeps it until it runs again or is "
      "killed",
      dir, wait.count(), holder));
}

OutputLock::OutputLock(OutputLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

OutputLock& OutputLock::operator=(OutputLock&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

OutputLock::~OutputLock() { release(); }

void OutputLock::release() noexcept {
  if (fd_ < 0) return;
  // Empty the record while still holding the lock, then unlock explicitly
  // (a descriptor duplicated by fork would otherwise keep it).
  if (::ftruncate(fd_, 0) == 0) ::fsync(fd_);
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
  fd_ = -1;
}

}  // namespace dtrain::io
