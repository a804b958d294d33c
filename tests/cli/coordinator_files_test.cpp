// The mpirun coordinator file on a real file system with injected faults:
// a reader sees no file or the whole address, never part of it.
#include "cli/coordinator_files.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "testing/fault_fs.h"

namespace dtrain::cli {
namespace {

using Fs = testing::FaultInjectingFileSystem;

TEST(CoordinatorFiles, WritesReadsAndRemoves) {
  testing::TempDir dir;
  FileSystemCoordinatorFiles files(io::default_file_system());
  const std::string path = comm::coordinator_file_path(dir.file("new/out"), "9-x");
  EXPECT_EQ(files.read(path), std::nullopt);
  files.remove(path);  // absent: nothing to do
  const std::string content = comm::encode_coordinator_file("9-x", "127.0.0.1:4242");
  files.write_atomic(path, content);  // creates the output folder
  EXPECT_EQ(files.read(path), content);
  files.remove(path);
  EXPECT_EQ(files.read(path), std::nullopt);
}

TEST(CoordinatorFiles, ACrashAtAnyStepLeavesNoFileOrTheWholeAddress) {
  testing::TempDir dir;
  const std::string path = comm::coordinator_file_path(dir.path(), "9-x");
  const std::string content = comm::encode_coordinator_file("9-x", "127.0.0.1:4242");
  for (int64_t step = 1;; ++step) {
    std::filesystem::remove(path);
    Fs fs(io::default_file_system());
    FileSystemCoordinatorFiles files(fs);
    fs.crash_at(step);
    bool completed = true;
    try {
      files.write_atomic(path, content);
    } catch (const testing::SimulatedCrash&) {
      completed = false;
    }
    fs.power_loss();
    const std::optional<std::string> seen = FileSystemCoordinatorFiles(fs).read(path);
    if (seen) {
      EXPECT_EQ(comm::decode_coordinator_file(*seen, "9-x"), "127.0.0.1:4242") << step;
    }
    if (completed) break;
    ASSERT_LT(step, 20) << "the write never completed";
  }
}

TEST(CoordinatorFiles, AFailedRenameThrowsAndLeavesNoFile) {
  testing::TempDir dir;
  Fs fs(io::default_file_system());
  FileSystemCoordinatorFiles files(fs);
  const std::string path = comm::coordinator_file_path(dir.path(), "9-x");
  fs.fail_nth(Fs::Op::kRename, 1);
  EXPECT_THROW(files.write_atomic(path, "x"), io::FileError);
  EXPECT_EQ(files.read(path), std::nullopt);
}

}  // namespace
}  // namespace dtrain::cli
