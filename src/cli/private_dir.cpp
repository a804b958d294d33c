#include "cli/private_dir.h"

#include <fmt/format.h>
#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <system_error>
#include <utility>

namespace dtrain::cli {

namespace {

// Longest socket path an ipc endpoint may have (sockaddr_un::sun_path less
// its terminating NUL).
constexpr size_t kMaxSocketPath = 107;

}  // namespace

PrivateDir::PrivateDir(const std::string& tmpdir, const std::string& prefix,
                       const std::string& what) {
  std::string base = tmpdir.empty() ? "/tmp" : tmpdir;
  // The sockets' paths must fit sockaddr_un: fall back to /tmp when TMPDIR is deep.
  if (base.size() + 48 > kMaxSocketPath) base = "/tmp";
  std::string pattern = base + "/" + prefix + "-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    throw std::system_error(errno, std::generic_category(),
                            fmt::format("mkdtemp {} ({})", pattern, what));
  }
  path_ = std::move(pattern);
}

PrivateDir::~PrivateDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace dtrain::cli
