#include "cli/coordinator_files.h"

#include <filesystem>

#include "io/atomic_file.h"

namespace dtrain::cli {

namespace {

// A coordinator file is one short line of text and two labels.
constexpr uint64_t kMaxCoordinatorFileBytes = 4096;

}  // namespace

void FileSystemCoordinatorFiles::write_atomic(const std::string& path, const std::string& data) {
  const std::string folder = std::filesystem::path(path).parent_path().string();
  if (!folder.empty()) fs_.create_directories(folder);
  io::write_file_atomic(fs_, path, data);
}

std::optional<std::string> FileSystemCoordinatorFiles::read(const std::string& path) {
  if (!fs_.exists(path)) return std::nullopt;
  try {
    return fs_.read_file(path, kMaxCoordinatorFileBytes);
  } catch (const io::FileError&) {
    if (!fs_.exists(path)) return std::nullopt;  // removed between the two calls
    throw;
  }
}

void FileSystemCoordinatorFiles::remove(const std::string& path) {
  if (fs_.exists(path)) fs_.remove_file(path);
}

}  // namespace dtrain::cli
