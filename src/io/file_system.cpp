#include "io/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace dtrain::io {

FileError::FileError(std::string operation, std::string path, const std::string& reason)
    : Error(fmt::format("{} {}: {}", operation, path, reason)),
      operation_(std::move(operation)),
      path_(std::move(path)),
      reason_(reason) {}

namespace {

[[noreturn]] void throw_errno(const char* operation, const std::string& path, int err) {
  throw FileError(operation, path, std::strerror(err));
}

// Closes the descriptor on every path out of a function.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the result (close can report a deferred write error).
  int close_now() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// What a non-regular file is, for messages.
const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "neither a file nor a directory";
}

void fsync_path(const char* operation, const std::string& path, int open_flags) {
  FileDescriptor fd(::open(path.c_str(), open_flags | O_CLOEXEC));
  if (fd.get() < 0) throw_errno(operation, path, errno);
  if (::fsync(fd.get()) != 0) throw_errno(operation, path, errno);
}

class PosixFileSystem final : public FileSystem {
 public:
  std::string read_file(const std::string& path, uint64_t max_bytes) override {
    // O_NONBLOCK: opening a FIFO without a writer would otherwise block. It
    // changes nothing for the regular files that are read below.
    FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (fd.get() < 0) throw_errno("read", path, errno);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw_errno("read", path, errno);
    if (!S_ISREG(st.st_mode)) {
      throw FileError("read", path,
                      fmt::format("not a regular file (it is {})", file_kind(st.st_mode)));
    }
    const auto size = static_cast<uint64_t>(st.st_size);
    if (size > max_bytes) {
      throw FileError("read", path,
                      fmt::format("{} bytes, over the limit of {} bytes", size, max_bytes));
    }
    std::string data(static_cast<size_t>(size), '\0');
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("read", path, errno);
      }
      if (n == 0) {
        throw FileError(
            "read", path,
            fmt::format("the file shrank while it was read: {} of {} bytes", done, data.size()));
      }
      done += static_cast<size_t>(n);
    }
    return data;
  }

  void write_file(const std::string& path, std::string_view data) override {
    FileDescriptor fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) throw_errno("write", path, errno);
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("write", path, errno);
      }
      done += static_cast<size_t>(n);
    }
    if (fd.close_now() != 0) throw_errno("write", path, errno);
  }

  void sync_file(const std::string& path) override { fsync_path("fsync", path, O_RDONLY); }

  void sync_directory(const std::string& dir) override {
    fsync_path("fsync directory", dir, O_RDONLY | O_DIRECTORY);
  }

  void rename_file(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      throw FileError("rename", from + " -> " + to, std::strerror(errno));
    }
  }

  void remove_file(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) throw_errno("remove", path, errno);
  }

  bool exists(const std::string& path) override {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
  }

  std::vector<std::string> list_directory(const std::string& dir) override {
    DIR* handle = ::opendir(dir.c_str());
    if (handle == nullptr) throw_errno("list", dir, errno);
    std::vector<std::string> names;
    errno = 0;
    while (const dirent* entry = ::readdir(handle)) {
      const std::string_view name(entry->d_name);
      if (name != "." && name != "..") names.emplace_back(name);
    }
    const int err = errno;
    ::closedir(handle);
    if (err != 0) throw_errno("list", dir, err);
    std::sort(names.begin(), names.end());
    return names;
  }

  void create_directories(const std::string& dir) override {
    if (dir.empty()) return;
    // Create each prefix ending at a separator, then the whole path.
    for (size_t pos = dir.find('/', 1);; pos = dir.find('/', pos + 1)) {
      const std::string prefix = dir.substr(0, pos);
      if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
        throw_errno("create directory", prefix, errno);
      }
      if (pos == std::string::npos) break;
    }
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) throw_errno("create directory", dir, errno);
    if (!S_ISDIR(st.st_mode))
      throw FileError("create directory", dir, "exists and is not a directory");
  }
};

}  // namespace

FileSystem& default_file_system() {
  static PosixFileSystem posix;  // stateless: safe to share
  return posix;
}

std::string join_path(std::string_view dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  if (dir.back() == '/') return fmt::format("{}{}", dir, name);
  return fmt::format("{}/{}", dir, name);
}

std::string parent_directory(std::string_view path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

std::string base_name(std::string_view path) {
  const size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

std::string read_input_file(FileSystem& fs, const std::string& path, uint64_t max_bytes,
                            std::string_view what) {
  try {
    return fs.read_file(path, max_bytes);
  } catch (const FileError& e) {
    throw DataError(fmt::format("cannot read {} '{}': {}", what, path, e.reason()));
  }
}

std::string read_regular_file(const std::string& path, uint64_t max_bytes, std::string_view what) {
  return read_input_file(default_file_system(), path, max_bytes, what);
}

}  // namespace dtrain::io
