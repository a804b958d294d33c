#include "io/atomic_file.h"

#include <gtest/gtest.h>

#include "testing/fault_fs.h"

namespace dtrain::io {
namespace {

using dtrain::testing::FaultInjectingFileSystem;
using dtrain::testing::SimulatedCrash;
using dtrain::testing::TempDir;
using Op = FaultInjectingFileSystem::Op;

const std::string kOld = "the old content, complete and durable";
const std::string kNew = "the new content, which is longer than the old one by a bit";

std::vector<std::string> temporaries(const std::string& dir) {
  std::vector<std::string> out;
  for (const std::string& name : default_file_system().list_directory(dir)) {
    if (is_temporary_file(name)) out.push_back(name);
  }
  return out;
}

TEST(AtomicFile, WritesAndReplacesLeavingNoTemporaryFile) {
  TempDir tmp;
  FileSystem& fs = default_file_system();
  const std::string path = tmp.file("f");
  write_file_atomic(fs, path, kOld);
  EXPECT_EQ(fs.read_file(path, kUnlimitedBytes), kOld);
  write_file_atomic(fs, path, kNew);
  EXPECT_EQ(fs.read_file(path, kUnlimitedBytes), kNew);
  EXPECT_EQ(fs.list_directory(tmp.path()), std::vector<std::string>{"f"});
}

TEST(AtomicFile, NextWriterRemovesStaleTemporariesOfItsFileOnly) {
  TempDir tmp;
  FileSystem& fs = default_file_system();
  fs.write_file(tmp.file("f.tmp-0123456789abcdef"), "left by a crash");
  fs.write_file(tmp.file("g.tmp-0123456789abcdef"), "another file's");
  fs.write_file(tmp.file("f.tmp-notes"), "not ours");
  write_file_atomic(fs, tmp.file("f"), kNew);
  EXPECT_EQ(fs.list_directory(tmp.path()),
            (std::vector<std::string>{"f", "f.tmp-notes", "g.tmp-0123456789abcdef"}));
}

TEST(AtomicFile, RecognisesTemporaryNames) {
  EXPECT_TRUE(is_temporary_file("ckpt-5.dtc.tmp-0123456789abcdef"));
  EXPECT_FALSE(is_temporary_file("ckpt-5.dtc"));
  EXPECT_FALSE(is_temporary_file("ckpt-5.dtc.tmp-0123"));
  EXPECT_FALSE(is_temporary_file("ckpt-5.dtc.tmp-0123456789abcdeg"));
  EXPECT_FALSE(is_temporary_file(".tmp-0123456789abcdef"));
}

// An I/O error at any step leaves the old file and no temporary behind.
TEST(AtomicFile, InjectedFailureAtEachStepKeepsTheOldFile) {
  for (const Op op : {Op::kWrite, Op::kSync, Op::kRename, Op::kSyncDirectory}) {
    TempDir tmp;
    const std::string path = tmp.file("f");
    default_file_system().write_file(path, kOld);
    FaultInjectingFileSystem fs(default_file_system());
    fs.fail_nth(op, 1);
    EXPECT_THROW(write_file_atomic(fs, path, kNew), FileError) << static_cast<int>(op);
    if (op == Op::kSyncDirectory) {
      // The rename happened; only its durability is in doubt.
      EXPECT_EQ(fs.read_file(path, kUnlimitedBytes), kNew);
    } else {
      EXPECT_EQ(fs.read_file(path, kUnlimitedBytes), kOld) << static_cast<int>(op);
    }
    EXPECT_TRUE(temporaries(tmp.path()).empty()) << static_cast<int>(op);
  }
}

// Counts the mutating calls of one complete atomic write.
int64_t mutations_of_one_write(bool with_old_file) {
  TempDir tmp;
  if (with_old_file) default_file_system().write_file(tmp.file("f"), kOld);
  FaultInjectingFileSystem fs(default_file_system());
  write_file_atomic(fs, tmp.file("f"), kNew);
  return fs.mutations();
}

// Crashes the writer at every mutating step, with and without losing power
// afterwards, and checks the reader sees the old file or the new one intact.
void check_crash_at_every_step(bool with_old_file) {
  const int64_t steps = mutations_of_one_write(with_old_file);
  ASSERT_GE(steps, 4);  // write, fsync, rename, fsync directory
  for (int64_t crash_at = 1; crash_at <= steps; ++crash_at) {
    for (const bool lose_power : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "crash at mutation " << crash_at << " of " << steps
                                        << (lose_power ? ", then power loss" : ""));
      TempDir tmp;
      const std::string path = tmp.file("f");
      if (with_old_file) default_file_system().write_file(path, kOld);
      FaultInjectingFileSystem fs(default_file_system());
      fs.crash_at(crash_at);
      EXPECT_THROW(write_file_atomic(fs, path, kNew), SimulatedCrash);
      if (lose_power) {
        fs.power_loss();
      } else {
        fs.restart();
      }
      if (fs.exists(path)) {
        const std::string got = fs.read_file(path, kUnlimitedBytes);
        EXPECT_TRUE(got == kNew || (with_old_file && got == kOld)) << "torn content: " << got;
      } else {
        EXPECT_FALSE(with_old_file) << "the old file vanished";
      }
      // The next writer succeeds and cleans up.
      write_file_atomic(fs, path, kNew);
      EXPECT_EQ(fs.read_file(path, kUnlimitedBytes), kNew);
      EXPECT_TRUE(temporaries(tmp.path()).empty());
    }
  }
}

TEST(AtomicFile, CrashAtEveryStepLeavesOldOrNewContent) { check_crash_at_every_step(true); }

TEST(AtomicFile, CrashAtEveryStepLeavesNoFileOrNewContent) { check_crash_at_every_step(false); }

// The harness must catch a writer that skips the fsync before renaming: after
// a power loss its file is torn. (Guards the crash test against passing
// vacuously.)
TEST(AtomicFile, FaultFileSystemDetectsAWriterThatDoesNotSync) {
  TempDir tmp;
  const std::string path = tmp.file("f");
  default_file_system().write_file(path, kOld);
  FaultInjectingFileSystem fs(default_file_system());
  fs.write_file(path + ".new", kNew);
  fs.rename_file(path + ".new", path);
  fs.sync_directory(tmp.path());
  fs.power_loss();
  const std::string got = fs.read_file(path, kUnlimitedBytes);
  EXPECT_NE(got, kNew);
  EXPECT_NE(got, kOld);
}

}  // namespace
}  // namespace dtrain::io
