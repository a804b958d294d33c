// Which checkpoint a run may resume from (issue #18, items 7 and 9): the
// job's identity and bounds (check_resume), non-finite state, refused and
// corrupt files moved to rejected/ (never deleted), and pruning that keeps
// the last valid checkpoint.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <limits>

#include "io/checkpoint.h"
#include "testing/fault_fs.h"
#include "testing/hostile_files.h"

namespace dtrain::io {
namespace {

using dtrain::testing::TempDir;

struct CapturedLog {
  std::vector<std::string> lines;
  Logger logger{LogLevel::kDebug,
                [this](LogLevel, std::string_view line) { lines.emplace_back(line); }};
  // The lines containing `part`.
  size_t count(const std::string& part) const {
    size_t n = 0;
    for (const std::string& line : lines) n += line.find(part) != std::string::npos ? 1 : 0;
    return n;
  }
};

StateDict model_state(int64_t width, float value) {
  StateDict model;
  model.insert("fc.weight", Tensor::full({2, width}, value));
  model.insert("fc.bias", Tensor::full({2}, value));
  return model;
}

// A checkpoint of job `job` at `step` whose model has the given width and
// values (a NaN value makes it non-finite).
Checkpoint job_checkpoint(const std::string& job, int64_t step, int64_t width = 3,
                          float value = 1.0f) {
  Checkpoint c;
  c.step = step;
  c.epoch = step / 10;
  StateDict model = model_state(width, value);
  stamp_identity(c, JobIdentity{job, state_fingerprint(model)});
  c.add_section(std::string(kModelSection), std::move(model));
  StateDict optimizer;
  optimizer.insert("m.0", Tensor::full({2}, value));
  c.add_section("optimizer", std::move(optimizer));
  return c;
}

ResumeCheck check_for(const std::string& job, int64_t width = 3) {
  ResumeCheck check;
  check.identity = JobIdentity{job, state_fingerprint(model_state(width, 0.0f))};
  check.max_step = 100;
  check.max_epoch = 10;
  return check;
}

std::vector<std::string> names_in(const std::string& dir) {
  FileSystem& fs = default_file_system();
  return fs.exists(dir) ? fs.list_directory(dir) : std::vector<std::string>{};
}

std::string file_bytes(const std::string& path) {
  return default_file_system().read_file(path, kUnlimitedBytes);
}

TEST(CheckpointIdentity, StampsTheJobNameAndTheModelFingerprint) {
  const Checkpoint c = job_checkpoint("mnist", 5);
  EXPECT_EQ(c.metadata.at("job"), "mnist");
  EXPECT_EQ(c.metadata.at("model_fingerprint"), state_fingerprint(model_state(3, 7.0f)));
  EXPECT_EQ(c.metadata.at("model_fingerprint").size(), 16u);
}

TEST(CheckpointIdentity, CheckResumeNamesEveryMismatch) {
  CapturedLog log;
  const ResumeCheck check = check_for("mnist");
  const auto verdict = [&](const Checkpoint& c) {
    return check_resume("run/ckpt.dtc", c, check, log.logger).value_or("accepted");
  };
  EXPECT_EQ(verdict(job_checkpoint("mnist", 100)), "accepted");
  EXPECT_EQ(verdict(job_checkpoint("cifar", 5)), "written by job 'cifar', this job is 'mnist'");
  Checkpoint anonymous = job_checkpoint("mnist", 5);
  anonymous.metadata.erase("job");
  EXPECT_EQ(verdict(anonymous), "carries no job name");
  const Checkpoint wider = job_checkpoint("mnist", 5, 4);
  EXPECT_EQ(verdict(wider), "its model (fingerprint " + state_fingerprint(model_state(4, 0)) +
                                ") is not this job's (fingerprint " +
                                check.identity.model_fingerprint +
                                "): layers or their sizes differ");
  // The fingerprint is computed from the tensors: a copied metadata value
  // does not make another model pass.
  Checkpoint forged = wider;
  forged.metadata["model_fingerprint"] = check.identity.model_fingerprint;
  EXPECT_NE(verdict(forged), "accepted");
  Checkpoint no_model;
  no_model.metadata["job"] = "mnist";
  EXPECT_EQ(verdict(no_model), "has no 'model' section");
  // Issue #18: a forged step of 2^62 "finished" the run without training.
  EXPECT_EQ(verdict(job_checkpoint("mnist", int64_t{1} << 62)),
            "step 4611686018427387904 is beyond the job's last step 100");
  EXPECT_EQ(verdict(job_checkpoint("mnist", 101)), "step 101 is beyond the job's last step 100");
  Checkpoint late = job_checkpoint("mnist", 50);
  late.epoch = 11;
  EXPECT_EQ(verdict(late), "epoch 11 is beyond the job's 10 epochs");
  EXPECT_TRUE(log.lines.empty());

  // Unchecked fields: an empty identity accepts any name and model.
  EXPECT_FALSE(check_resume("p", anonymous, ResumeCheck{}, log.logger).has_value());
}

TEST(CheckpointIdentity, AForcedIdentityMismatchIsAcceptedWithAWarningButBoundsStillApply) {
  CapturedLog log;
  ResumeCheck check = check_for("mnist");
  check.force_identity = true;
  EXPECT_FALSE(check_resume("run/ckpt-5.dtc", job_checkpoint("cifar", 5), check, log.logger));
  ASSERT_EQ(log.lines.size(), 1u);
  EXPECT_EQ(log.lines[0],
            "checkpoint run/ckpt-5.dtc: written by job 'cifar', this job is 'mnist'; using it "
            "anyway (the identity check is forced)");
  EXPECT_EQ(check_resume("p", job_checkpoint("cifar", 500), check, log.logger),
            "step 500 is beyond the job's last step 100");
}

// Issue #18: another job's checkpoint in the output folder resumed silently.
TEST(CheckpointDirectory, AnotherJobsCheckpointsAreMovedAsideAndTheOwnOneIsUsed) {
  TempDir tmp;
  CapturedLog log;
  CheckpointDirectory dir(tmp.path(), 10, default_file_system(), log.logger);
  dir.write(job_checkpoint("mnist", 10));
  dir.write(job_checkpoint("cifar", 20));
  dir.write(job_checkpoint("mnist", 30, 5));  // same name, another model
  const std::string cifar_bytes = file_bytes(dir.path_for(20));

  CheckpointLoadOptions options;
  options.validate = resume_validator(check_for("mnist"), log.logger);
  const auto found = dir.load_latest(options);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->checkpoint.step, 10);
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{10}));
  EXPECT_EQ(names_in(tmp.file("rejected")),
            (std::vector<std::string>{"ckpt-20.dtc", "ckpt-30.dtc"}));
  EXPECT_EQ(file_bytes(tmp.file("rejected/ckpt-20.dtc")), cifar_bytes);
  ASSERT_EQ(log.lines.size(), 2u);
  EXPECT_EQ(log.lines[1], "skipping checkpoint " + dir.path_for(20) +
                              " (step 20): written by job 'cifar', this job is 'mnist'; moved it "
                              "to " +
                              tmp.file("rejected/ckpt-20.dtc"));
  EXPECT_NE(log.lines[0].find("(step 30): its model (fingerprint"), std::string::npos)
      << log.lines[0];
}

// Issue #18: when every checkpoint was corrupt the run started from step 0
// and deleted them. They are moved aside, and the caller learns that none is
// valid.
TEST(CheckpointDirectory, AllCorruptCheckpointsAreMovedAsideNotDeleted) {
  TempDir tmp;
  CapturedLog log;
  FileSystem& fs = default_file_system();
  CheckpointDirectory dir(tmp.path(), 5, fs, log.logger);
  for (const int64_t step : {1, 2, 3}) dir.write(job_checkpoint("mnist", step));
  std::map<std::string, std::string> damaged;
  for (const int64_t step : {1, 2, 3}) {
    std::string bytes = file_bytes(dir.path_for(step));
    bytes[bytes.size() / 3] ^= 0x10;
    fs.write_file(dir.path_for(step), bytes);
    damaged["ckpt-" + std::to_string(step) + ".dtc"] = bytes;
  }
  EXPECT_FALSE(dir.load_latest().has_value());
  EXPECT_TRUE(dir.steps().empty());
  EXPECT_EQ(log.count("skipping unreadable checkpoint"), 3u);
  for (const auto& [name, bytes] : damaged) {
    EXPECT_EQ(file_bytes(tmp.file("rejected/" + name)), bytes) << name;
  }
  // A new run writes its own checkpoints; the rejected ones stay untouched.
  dir.write(job_checkpoint("mnist", 1));
  EXPECT_EQ(names_in(tmp.file("rejected")).size(), 3u);
}

TEST(CheckpointDirectory, ARejectedNameThatIsTakenGetsASuffix) {
  TempDir tmp;
  CapturedLog log;
  FileSystem& fs = default_file_system();
  CheckpointDirectory dir(tmp.path(), 5, fs, log.logger);
  for (int round = 0; round < 3; ++round) {
    fs.write_file(dir.path_for(7), "junk " + std::to_string(round));
    EXPECT_FALSE(dir.load_latest().has_value());
  }
  EXPECT_EQ(names_in(tmp.file("rejected")),
            (std::vector<std::string>{"ckpt-7.dtc", "ckpt-7.dtc.1", "ckpt-7.dtc.2"}));
  EXPECT_EQ(file_bytes(tmp.file("rejected/ckpt-7.dtc.2")), "junk 2");
}

// Item 7: a checkpoint holding NaN or infinity is skipped on resume.
TEST(CheckpointDirectory, NonFiniteCheckpointsAreSkippedOnResume) {
  TempDir tmp;
  CapturedLog log;
  CheckpointDirectory dir(tmp.path(), 10, default_file_system(), log.logger);
  dir.write(job_checkpoint("mnist", 10));
  dir.write(job_checkpoint("mnist", 20, 3, std::numeric_limits<float>::quiet_NaN()));
  dir.write(job_checkpoint("mnist", 30, 3, std::numeric_limits<float>::infinity()));
  const auto found = dir.load_latest();
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->checkpoint.step, 10);
  ASSERT_EQ(log.lines.size(), 2u);
  EXPECT_EQ(log.lines[0], "skipping checkpoint " + dir.path_for(30) +
                              " (step 30): holds a non-finite value: section 'model' tensor "
                              "'fc.weight' element 0 is inf; moved it to " +
                              tmp.file("rejected/ckpt-30.dtc"));
  EXPECT_NE(log.lines[1].find("element 0 is nan"), std::string::npos) << log.lines[1];

  // require_finite = false takes the newest intact file as it is.
  dir.write(job_checkpoint("mnist", 40, 3, std::numeric_limits<float>::quiet_NaN()));
  CheckpointLoadOptions any;
  any.require_finite = false;
  EXPECT_EQ(dir.load_latest(any)->checkpoint.step, 40);
}

// Item 7: rotation never deletes the last finite checkpoint.
TEST(CheckpointDirectory, PruningKeepsTheLastFiniteCheckpoint) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  TempDir tmp;
  CapturedLog log;
  CheckpointDirectory dir(tmp.path(), 2, default_file_system(), log.logger);
  dir.write(job_checkpoint("mnist", 10));
  dir.write(job_checkpoint("mnist", 20));
  dir.write(job_checkpoint("mnist", 30, 3, nan));
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{20, 30}));  // 10 goes: 20 is valid and newer
  dir.write(job_checkpoint("mnist", 40, 3, nan));
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{20, 30, 40}));  // 20 is the last finite one
  dir.write(job_checkpoint("mnist", 50, 3, nan));
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{20, 40, 50}));  // bounded: keep_last + 1
  // The same rule after a restart, when only the files tell which is valid.
  CheckpointDirectory restarted(tmp.path(), 2, default_file_system(), log.logger);
  restarted.write(job_checkpoint("mnist", 60, 3, nan));
  EXPECT_EQ(restarted.steps(), (std::vector<int64_t>{20, 50, 60}));
  // A finite checkpoint again: the old one may go.
  restarted.write(job_checkpoint("mnist", 70));
  EXPECT_EQ(restarted.steps(), (std::vector<int64_t>{60, 70}));
  EXPECT_TRUE(log.lines.empty());
  // Resume skips the non-finite newest and lands on the finite one.
  CheckpointDirectory again(tmp.path(), 2, default_file_system(), log.logger);
  again.write(job_checkpoint("mnist", 80, 3, nan));
  EXPECT_EQ(again.steps(), (std::vector<int64_t>{70, 80}));
  EXPECT_EQ(again.load_latest()->checkpoint.step, 70);
}

// Pruning keeps a damaged file that is newer than the last valid checkpoint:
// it moves it aside instead of deleting it.
TEST(CheckpointDirectory, PruningMovesAsideADamagedFileItWouldOtherwiseDelete) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  TempDir tmp;
  FileSystem& fs = default_file_system();
  CheckpointDirectory writer(tmp.path(), 1, fs, Logger::null());
  writer.write(job_checkpoint("mnist", 10));
  fs.write_file(writer.path_for(20), "damaged");
  CheckpointDirectory dir(tmp.path(), 1, fs, Logger::null());
  dir.write(job_checkpoint("mnist", 30, 3, nan));
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{10, 30}));
  EXPECT_EQ(file_bytes(tmp.file("rejected/ckpt-20.dtc")), "damaged");
}

// A ckpt-N.dtc that is a FIFO or a device is refused at once (not read
// forever) and moved aside like any unreadable file.
TEST(CheckpointDirectory, AFifoOrADeviceAsACheckpointIsSkipped) {
  TempDir tmp;
  CapturedLog log;
  CheckpointDirectory dir(tmp.path(), 5, default_file_system(), log.logger);
  dir.write(job_checkpoint("mnist", 1));
  ASSERT_EQ(::mkfifo(dir.path_for(2).c_str(), 0644), 0);
  ASSERT_EQ(::symlink("/dev/zero", dir.path_for(3).c_str()), 0);
  const auto found = dir.load_latest();
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->checkpoint.step, 1);
  ASSERT_EQ(log.lines.size(), 2u);
  EXPECT_NE(log.lines[0].find(dir.path_for(3) +
                              ": cannot read: not a regular file (it is a character device)"),
            std::string::npos)
      << log.lines[0];
  EXPECT_NE(log.lines[1].find(dir.path_for(2) + ": cannot read: not a regular file (it is a FIFO)"),
            std::string::npos)
      << log.lines[1];
  EXPECT_EQ(names_in(tmp.file("rejected")), (std::vector<std::string>{"ckpt-2.dtc", "ckpt-3.dtc"}));

  // An oversized file counts as unreadable.
  dir.write(job_checkpoint("mnist", 4));
  CheckpointLoadOptions small;
  small.max_file_bytes = 100;
  EXPECT_FALSE(dir.load_latest(small).has_value());
  EXPECT_EQ(log.count("over the limit of 100 bytes"), 2u);
}

TEST(CheckpointDirectory, AValidatorsExceptionEndsTheSearchAndMovesNothing) {
  TempDir tmp;
  CheckpointDirectory dir(tmp.path(), 5, default_file_system(), Logger::null());
  dir.write(job_checkpoint("mnist", 1));
  dir.write(job_checkpoint("mnist", 2));
  CheckpointLoadOptions options;
  options.validate = [](const std::string& path,
                        const Checkpoint& c) -> std::optional<std::string> {
    throw CheckpointError(path, c.step, "written with batch size 32, the job has 16");
  };
  EXPECT_THROW(dir.load_latest(options), CheckpointError);
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{1, 2}));
  EXPECT_FALSE(default_file_system().exists(tmp.file("rejected")));
}

}  // namespace
}  // namespace dtrain::io
