#include "testing/fault_fs.h"

#include <fmt/format.h>
#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <system_error>

namespace dtrain::testing {

TempDir::TempDir() : TempDir(std::filesystem::temp_directory_path().string()) {}

TempDir::TempDir(const std::string& base) {
  std::string pattern = (std::filesystem::path(base) / "dtrain-test-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::system_error(errno, std::generic_category(), "mkdtemp " + pattern);
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

namespace {
bool is_mutation(FaultInjectingFileSystem::Op op) {
  using Op = FaultInjectingFileSystem::Op;
  return op != Op::kRead && op != Op::kList;
}
}  // namespace

void FaultInjectingFileSystem::fail_nth(Op op, int64_t n) { fail_countdown_[op] = n; }

void FaultInjectingFileSystem::crash_at(int64_t n) { crash_countdown_ = n; }

bool FaultInjectingFileSystem::enter(Op op, const std::string& path) {
  if (crashed_) throw SimulatedCrash(fmt::format("call on {} after the simulated crash", path));
  auto it = fail_countdown_.find(op);
  if (it != fail_countdown_.end() && --it->second == 0) {
    fail_countdown_.erase(it);
    throw io::FileError("injected fault on", path, "Input/output error (injected)");
  }
  if (!is_mutation(op)) return false;
  ++mutations_;
  if (crash_countdown_ > 0 && --crash_countdown_ == 0) {
    crashed_ = true;
    return true;
  }
  return false;
}

std::optional<std::string> FaultInjectingFileSystem::content_of(const std::string& path) {
  if (!base_.exists(path)) return std::nullopt;
  return base_.read_file(path, io::kUnlimitedBytes);
}

std::string FaultInjectingFileSystem::read_file(const std::string& path, uint64_t max_bytes) {
  enter(Op::kRead, path);
  return base_.read_file(path, max_bytes);
}

void FaultInjectingFileSystem::write_file(const std::string& path, std::string_view data) {
  const bool crash_here = enter(Op::kWrite, path);
  const bool created = !base_.exists(path);
  const std::string_view written = crash_here ? data.substr(0, data.size() / 2) : data;
  base_.write_file(path, written);
  if (created) pending_.push_back({PendingEntry::Kind::kCreate, path, "", std::nullopt});
  unsynced_[path] = std::string(written);
  if (crash_here) throw SimulatedCrash(fmt::format("crash while writing {}", path));
}

void FaultInjectingFileSystem::sync_file(const std::string& path) {
  if (enter(Op::kSync, path)) throw SimulatedCrash(fmt::format("crash before fsync of {}", path));
  base_.sync_file(path);
  unsynced_.erase(path);
}

void FaultInjectingFileSystem::sync_directory(const std::string& dir) {
  if (enter(Op::kSyncDirectory, dir)) {
    throw SimulatedCrash(fmt::format("crash before fsync of directory {}", dir));
  }
  base_.sync_directory(dir);
  std::erase_if(pending_,
                [&](const PendingEntry& e) { return io::parent_directory(e.path) == dir; });
}

void FaultInjectingFileSystem::rename_file(const std::string& from, const std::string& to) {
  if (enter(Op::kRename, from)) {
    throw SimulatedCrash(fmt::format("crash before rename {} -> {}", from, to));
  }
  std::optional<std::string> before = content_of(to);
  base_.rename_file(from, to);
  pending_.push_back({PendingEntry::Kind::kRename, to, from, std::move(before)});
  unsynced_.erase(to);
  if (auto it = unsynced_.find(from); it != unsynced_.end()) {
    unsynced_[to] = std::move(it->second);
    unsynced_.erase(from);
  }
}

void FaultInjectingFileSystem::remove_file(const std::string& path) {
  if (enter(Op::kRemove, path)) throw SimulatedCrash(fmt::format("crash before removing {}", path));
  std::optional<std::string> before = content_of(path);
  base_.remove_file(path);
  pending_.push_back({PendingEntry::Kind::kRemove, path, "", std::move(before)});
  unsynced_.erase(path);
}

bool FaultInjectingFileSystem::exists(const std::string& path) {
  enter(Op::kRead, path);
  return base_.exists(path);
}

std::vector<std::string> FaultInjectingFileSystem::list_directory(const std::string& dir) {
  enter(Op::kList, dir);
  return base_.list_directory(dir);
}

void FaultInjectingFileSystem::create_directories(const std::string& dir) {
  if (enter(Op::kCreateDirectories, dir)) {
    throw SimulatedCrash(fmt::format("crash before creating {}", dir));
  }
  base_.create_directories(dir);
}

void FaultInjectingFileSystem::power_loss() {
  // Unsynced data first (the inode keeps a torn prefix), then the directory
  // operations, undone newest first so that renamed files travel back.
  for (const auto& [path, written] : unsynced_) {
    if (base_.exists(path)) {
      base_.write_file(path, std::string_view(written).substr(0, written.size() / 2));
    }
  }
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    switch (it->kind) {
      case PendingEntry::Kind::kCreate:
        if (base_.exists(it->path)) base_.remove_file(it->path);
        break;
      case PendingEntry::Kind::kRename:
        base_.rename_file(it->path, it->from);
        if (it->before) base_.write_file(it->path, *it->before);
        break;
      case PendingEntry::Kind::kRemove:
        if (it->before) base_.write_file(it->path, *it->before);
        break;
    }
  }
  restart();
}

void FaultInjectingFileSystem::restart() {
  crashed_ = false;
  crash_countdown_ = 0;
  unsynced_.clear();
  pending_.clear();
}

}  // namespace dtrain::testing
