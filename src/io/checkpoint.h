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
// CheckpointError (the FileError's text included).
//
// Reading is bounded: only a regular file of at most max_bytes is read
// (io::FileSystem::read_file), and negative steps and epochs are refused.
//
// Identity: a checkpoint carries the job's name and a fingerprint of its
// model's structure in its metadata (stamp_identity()); check_resume() tells
// why a checkpoint must not resume a job: another job's name, another model,
// or a step or epoch beyond the job's end (a forged or foreign file).
//
// CheckpointDirectory keeps "ckpt-<step>.dtc" files in one folder. It prunes
// all but the newest `keep_last`, except that it never removes the newest
// valid (intact and finite) checkpoint, so a run whose state became NaN keeps
// the last good one. load_latest() finds the newest file that reads back
// intact, holds finite values and passes the caller's validation; each file
// it skips on the way is logged with the reason and moved (never deleted) to
// "<dir>/rejected/".
//
// Ownership: Checkpoint is a value (its StateDicts hold tensor handles; clone
// them before saving if training continues concurrently). CheckpointDirectory
// holds references to a FileSystem and a Logger that its creator keeps alive
// for the directory object's lifetime, and remembers which of the files it
// wrote or read were valid (it assumes it is the folder's only writer).
// Thread safety: functions are pure; one CheckpointDirectory must not be used
// from two threads at once. Blocking: file I/O and fsync.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
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

// Where a checkpoint's first NaN or infinity is: "section 'model' tensor
// 'fc.weight' element 3 is nan"; nullopt when every value is finite. One pass
// over the data.
std::optional<std::string> describe_non_finite(const Checkpoint& checkpoint);

// ---- Identity ------------------------------------------------------------

// Metadata keys of the job's identity, and the section that holds the model.
inline constexpr std::string_view kJobNameKey = "job";
inline constexpr std::string_view kModelFingerprintKey = "model_fingerprint";
inline constexpr std::string_view kModelSection = "model";

struct JobIdentity {
  std::string job_name;           // the job file's name
  std::string model_fingerprint;  // state_fingerprint() of the model's state dict
};

// Sets metadata[kJobNameKey] and metadata[kModelFingerprintKey].
void stamp_identity(Checkpoint& checkpoint, const JobIdentity& identity);

// What a job accepts on resume.
struct ResumeCheck {
  // metadata[kJobNameKey] must equal job_name, and state_fingerprint() of the
  // checkpoint's kModelSection section must equal model_fingerprint (computed
  // from the tensors, so a stale or forged metadata value does not matter).
  // An empty field is not checked.
  JobIdentity identity;
  // The job's last step and epoch count: a checkpoint beyond them was not
  // written by this job (a forged step, or another job's file). Always enforced.
  int64_t max_step = std::numeric_limits<int64_t>::max();
  int64_t max_epoch = std::numeric_limits<int64_t>::max();
  // When true, an identity mismatch is logged as a warning and the
  // checkpoint accepted (the user said the job's name or model changed on
  // purpose); the step and epoch bounds still apply.
  bool force_identity = false;
};

// Why `checkpoint` (read from `path`) must not resume the job, or nullopt when
// it may. Forced identity mismatches are warned about through `logger`:
//   written by job 'a', this job is 'b'
//   carries no job name
//   its model (fingerprint 0123456789abcdef) is not this job's (fingerprint ...)
//   has no 'model' section
//   step 4611686018427387904 is beyond the job's last step 200
//   epoch 7 is beyond the job's 3 epochs
std::optional<std::string> check_resume(const std::string& path, const Checkpoint& checkpoint,
                                        const ResumeCheck& check, Logger& logger);

// ---- A folder of checkpoints ----------------------------------------------

// Decides whether an intact checkpoint may be used: nullopt to accept it, or
// the reason to refuse it. An exception thrown by it ends load_latest().
using CheckpointValidator =
    std::function<std::optional<std::string>(const std::string& path, const Checkpoint&)>;

// check_resume() as a validator. `logger` must outlive the returned function.
CheckpointValidator resume_validator(ResumeCheck check, Logger& logger);

struct CheckpointLoadOptions {
  CheckpointValidator validate;                  // empty: accept every intact checkpoint
  bool require_finite = true;                    // refuse a checkpoint holding a NaN or infinity
  uint64_t max_file_bytes = kMaxModelFileBytes;  // larger files count as unreadable
  // Move refused files to rejected/. Off for the processes of a job that
  // only read the folder (every worker resumes, only the chief moves files).
  bool move_refused = true;
};

// The folder load_latest() moves refused checkpoints to, under the directory.
inline constexpr std::string_view kRejectedFolder = "rejected";

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
  // same step), then prunes: removes the files beyond the newest keep_last,
  // except the newest valid one (intact, all values finite) when it is among
  // them; a file found unreadable while looking for it is moved to
  // rejected/ instead of removed. Files are read only when the checkpoint
  // just written is not valid itself. Returns the path written. Throws
  // CheckpointError on I/O failure, UsageError for a negative step.
  std::string write(const Checkpoint& checkpoint);

  struct Found {
    std::string path;
    Checkpoint checkpoint;
  };
  // The newest checkpoint that reads back intact (within
  // options.max_file_bytes), is finite (when options.require_finite) and
  // passes options.validate. Each newer file that fails is skipped with a
  // warning naming it and the reason, and moved to "<dir>/rejected/<name>"
  // (a name already there gets a suffix ".1", ".2", ...; a file that cannot
  // be moved stays, with a warning). nullopt when none is valid (an empty or
  // missing folder, or only refused files): the caller then starts afresh
  // and should say so.
  std::optional<Found> load_latest(const CheckpointLoadOptions& options = {});

  // What set_aside() moved.
  struct SetAside {
    std::string folder;          // "<dir>/<folder_name>"
    std::vector<int64_t> steps;  // ascending; never empty
  };
  // For a run that starts afresh over an earlier run's checkpoints: moves
  // every checkpoint file into "<dir>/<folder_name>" (one folder, so that
  // repeated fresh runs do not pile up copies: the files an even earlier run
  // left there are removed first), then syncs the folder. nullopt when there
  // is nothing to move or the folder cannot be listed (the first write then
  // reports it). Throws FileError when a file cannot be moved.
  std::optional<SetAside> set_aside(std::string_view folder_name);

 private:
  enum class Validity { kValid, kNonFinite, kUnreadable };
  Validity validity(int64_t step);
  void prune();
  // Moves `path` to rejected/; returns where it went, or "" after a warning.
  std::string move_aside(const std::string& path);

  std::string dir_;
  int64_t keep_last_;
  FileSystem& fs_;  // owned by the creator, outlives this object
  Logger& logger_;  // same
  // What this object learnt of its files (written or read), by step.
  std::map<int64_t, Validity> known_;
};

}  // namespace dtrain::io
