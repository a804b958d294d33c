#include "testing/hostile_files.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace dtrain::testing {

namespace {

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

}  // namespace

std::vector<HostilePath> hostile_paths(const TempDir& dir, uint64_t limit) {
  const std::string fifo = dir.file("fifo");
  if (::mkfifo(fifo.c_str(), 0644) != 0 && errno != EEXIST) throw_errno("mkfifo " + fifo);
  const std::string folder = dir.file("folder");
  if (::mkdir(folder.c_str(), 0755) != 0 && errno != EEXIST) throw_errno("mkdir " + folder);
  const std::string big = dir.file("big");
  const int fd = ::open(big.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno("open " + big);
  const int rc = ::ftruncate(fd, static_cast<off_t>(limit + 1));
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw std::system_error(err, std::generic_category(), "ftruncate " + big);
  return {
      {"/dev/zero", "not a regular file (it is a character device)"},
      {"/dev/urandom", "not a regular file (it is a character device)"},
      {fifo, "not a regular file (it is a FIFO)"},
      {folder, "not a regular file (it is a directory)"},
      {big, fmt::format("{} bytes, over the limit of {} bytes", limit + 1, limit)},
  };
}

}  // namespace dtrain::testing
