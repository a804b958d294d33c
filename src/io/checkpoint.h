// Training checkpoints: named StateDicts ("model", "optimizer", "trainer",
// ...) plus the run's position (step, epoch) and exact string metadata (RNG
// states, schedules), in one self-checking file, and a directory of them.
//
// The file format ("DTRNCKPT", version 1) is specified byte by byte in
// docs/checkpoint-format.md: a 24-byte frame header (magic, version, flags,
// body length), the body, and a CRC-32C over everything before it. Files are
// written through write_file_atomic, so a crash leaves the previous file or
// the complete new one.
//
// Reading refuses a file that is not a checkpoint, truncated or with trailing
// bytes, corrupt (CRC mismatch), of an unsupported version, or structurally
// malformed, with CheckpointError naming the path, the step when known, and
// what is wrong. I/O failures while writing or reading are also reported as
// CheckpointError (the FileError's text included). Only a regular file of
// at most max_bytes is read (io::FileSystem::read_file).
//
// CheckpointDirectory keeps "ckpt-<step>.dtc" files in one folder, prunes all
// but the newest `keep_last`, and finds the newest file that reads back
// intact, skipping corrupt newer ones with a warning.
//
// Ownership: Checkpoint is a value (its StateDicts hold tensor handles; clone
// them before saving if training continues concurrently). CheckpointDirectory
// holds references to a FileSystem and a Logger that its creator keeps alive
// for the directory object's lifetime. Thread safety: functions are pure;
// one CheckpointDirectory must not be used from two threads at once.
// Blocking: file I/O and fsync.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/log.h"
#include "core/rng.h"
#include "io/file_system.h"
#include "tensor/state_dict.h"

namespace dtrain::io {

struct Checkpoint {
  int64_t step = 0;   // optimizer steps taken
  int64_t epoch = 0;  // epochs completed, or the epoch in progress: the trainer's convention
  // Exact scalars and strings: RNG states, scheduler positions, the job name.
  std::map<std::string, std::string> metadata;
  // Named StateDicts in file order; names unique.
  std::vector<std::pair<std::string, StateDict>> sections;

  // Appends a section; UsageError if `name` is taken.
  void add_section(std::string name, StateDict dict);
  bool has_section(const std::string& name) const;
  // UsageError naming the present sections when `name` is absent.
  const StateDict& section(const std::string& name) const;
};

inline constexpr uint32_t kCheckpointFormatVersion = 1;

// An Rng's state as metadata text: four 16-digit hex words separated by
// spaces, and back. decode_rng_state throws DataError naming the text when
// it is not exactly that.
std::string encode_rng_state(const Rng::State& state);
Rng::State decode_rng_state(std::string_view text);

// The file's bytes. `path` and the step only label errors.
std::string encode_checkpoint(const Checkpoint& checkpoint);
Checkpoint decode_checkpoint(std::string_view bytes, const std::string& path);

void write_checkpoint(const Checkpoint& checkpoint, const std::string& path,
                      FileSystem& fs = default_file_system());
// CheckpointError "cannot read: ..." also for a path that is not a regular
// file or a file over `max_bytes`.
Checkpoint read_checkpoint(const std::string& path, FileSystem& fs = default_file_system(),
                           uint64_t max_bytes = kMaxModelFileBytes);

class CheckpointDirectory {
 public:
  // `keep_last` >= 1 (UsageError otherwise). The folder is created on the
  // first write, not here.
  CheckpointDirectory(std::string dir, int64_t keep_last, FileSystem& fs, Logger& logger);

  const std::string& dir() const { return dir_; }
  // "<dir>/ckpt-<step>.dtc"
  std::string path_for(int64_t step) const;
  // Steps of the checkpoint files present, ascending (temporary files and
  // other names are ignored). Empty when the folder does not exist.
  std::vector<int64_t> steps() const;
  // Writes the checkpoint for checkpoint.step atomically (replacing one of the
  // same step), then removes the oldest files beyond keep_last. Returns the
  // path written. Throws CheckpointError on I/O failure.
  std::string write(const Checkpoint& checkpoint);

  struct Found {
    std::string path;
    Checkpoint checkpoint;
  };
  // The newest checkpoint that reads back intact; each unreadable newer one
  // is skipped with a warning naming it and the reason. nullopt when there is
  // none (an empty or missing folder, or only corrupt files).
  std::optional<Found> load_latest() const;

 private:
  std::string dir_;
  int64_t keep_last_;
  FileSystem& fs_;  // owned by the creator, outlives this object
  Logger& logger_;  // same
};

}  // namespace dtrain::io
