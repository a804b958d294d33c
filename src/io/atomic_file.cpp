#include "io/atomic_file.h"

#include <fmt/format.h>

#include <random>

namespace dtrain::io {

namespace {

constexpr std::string_view kTempMarker = ".tmp-";

std::string random_suffix() {
  std::random_device device;  // a fresh source per call: no shared state
  const uint64_t value = (static_cast<uint64_t>(device()) << 32) ^ device();
  return fmt::format("{:016x}", value);
}

void remove_stale_temporaries(FileSystem& fs, const std::string& dir, const std::string& name) {
  const std::string prefix = name + std::string(kTempMarker);
  try {
    for (const std::string& entry : fs.list_directory(dir)) {
      if (entry.compare(0, prefix.size(), prefix) == 0 && is_temporary_file(entry)) {
        fs.remove_file(join_path(dir, entry));
      }
    }
  } catch (const FileError&) {
    // Stale temporaries are ignored by every reader; a later writer retries.
  }
}

}  // namespace

void write_file_atomic(FileSystem& fs, const std::string& path, std::string_view data) {
  const std::string dir = parent_directory(path);
  const std::string name = base_name(path);
  const std::string temp = fmt::format("{}{}{}", path, kTempMarker, random_suffix());
  try {
    fs.write_file(temp, data);
    fs.sync_file(temp);
    fs.rename_file(temp, path);
  } catch (const FileError&) {
    try {
      if (fs.exists(temp)) fs.remove_file(temp);
    } catch (const FileError&) {
      // The original failure is the one to report; the leftover is garbage.
    }
    throw;
  }
  fs.sync_directory(dir);
  remove_stale_temporaries(fs, dir, name);
}

bool is_temporary_file(std::string_view name) {
  const size_t at = name.rfind(kTempMarker);
  if (at == std::string_view::npos || at == 0) return false;
  const std::string_view suffix = name.substr(at + kTempMarker.size());
  if (suffix.size() != 16) return false;
  for (const char c : suffix) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace dtrain::io
