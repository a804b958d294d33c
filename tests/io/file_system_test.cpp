#include "io/file_system.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "testing/expect_error.h"
#include "testing/fault_fs.h"
#include "testing/hostile_files.h"

namespace dtrain::io {
namespace {

using dtrain::testing::expect_error;
using dtrain::testing::hostile_paths;
using dtrain::testing::HostilePath;
using dtrain::testing::TempDir;

TEST(PosixFileSystem, WritesReadsListsRenamesAndRemoves) {
  TempDir tmp;
  FileSystem& fs = default_file_system();
  const std::string dir = tmp.file("a/b/c");
  fs.create_directories(dir);
  fs.create_directories(dir);  // already there: fine
  EXPECT_TRUE(fs.exists(dir));

  const std::string binary("x\0y\xff", 4);
  fs.write_file(join_path(dir, "one"), binary);
  fs.write_file(join_path(dir, "two"), "");
  fs.sync_file(join_path(dir, "one"));
  fs.sync_directory(dir);
  EXPECT_EQ(fs.read_file(join_path(dir, "one"), kUnlimitedBytes), binary);
  EXPECT_EQ(fs.read_file(join_path(dir, "two"), kUnlimitedBytes), "");
  EXPECT_EQ(fs.list_directory(dir), (std::vector<std::string>{"one", "two"}));

  fs.rename_file(join_path(dir, "one"), join_path(dir, "two"));
  EXPECT_EQ(fs.read_file(join_path(dir, "two"), kUnlimitedBytes), binary);
  EXPECT_FALSE(fs.exists(join_path(dir, "one")));
  fs.remove_file(join_path(dir, "two"));
  EXPECT_TRUE(fs.list_directory(dir).empty());
}

TEST(PosixFileSystem, FailuresNameTheOperationAndPath) {
  TempDir tmp;
  FileSystem& fs = default_file_system();
  const std::string missing = tmp.file("missing");
  try {
    fs.read_file(missing, kUnlimitedBytes);
    FAIL() << "reading a missing file succeeded";
  } catch (const FileError& e) {
    EXPECT_EQ(e.operation(), "read");
    EXPECT_EQ(e.path(), missing);
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(fs.remove_file(missing), FileError);
  EXPECT_THROW(fs.list_directory(missing), FileError);
  EXPECT_THROW(fs.rename_file(missing, tmp.file("x")), FileError);
  EXPECT_THROW(fs.read_file(tmp.path(), kUnlimitedBytes), FileError);
  fs.write_file(tmp.file("plain"), "x");
  EXPECT_THROW(fs.create_directories(tmp.file("plain")), FileError);
  EXPECT_THROW(fs.create_directories(tmp.file("plain/sub")), FileError);
}

TEST(PosixFileSystem, ReadInputFileReportsDataError) {
  TempDir tmp;
  try {
    read_input_file(default_file_system(), tmp.file("nope.idx"), 100, "IDX file");
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()),
              "cannot read IDX file '" + tmp.file("nope.idx") + "': No such file or directory");
  }
}

// Issue #18: /dev/zero, /dev/urandom or a FIFO as an input grew memory until
// the process was killed, or hung. Every non-regular file, and a regular one
// over the limit, fails at once, before anything is allocated.
TEST(PosixFileSystem, ReadsOnlyRegularFilesWithinTheLimit) {
  TempDir tmp;
  FileSystem& fs = default_file_system();
  for (const HostilePath& bad : hostile_paths(tmp, 1000)) {
    SCOPED_TRACE(bad.path);
    try {
      fs.read_file(bad.path, 1000);
      ADD_FAILURE() << "read";
    } catch (const FileError& e) {
      EXPECT_EQ(e.operation(), "read");
      EXPECT_EQ(e.path(), bad.path);
      EXPECT_EQ(e.reason(), bad.reason);
    }
    expect_error<DataError>([&] { read_input_file(fs, bad.path, 1000, "CSV file"); },
                            "cannot read CSV file '" + bad.path + "': " + bad.reason);
    expect_error<DataError>([&] { read_regular_file(bad.path, 1000, "job file"); },
                            "cannot read job file '" + bad.path + "': " + bad.reason);
  }
  // Exactly at the limit is fine, and so is an empty file.
  const std::string bytes(1000, 'x');
  fs.write_file(tmp.file("full"), bytes);
  EXPECT_EQ(fs.read_file(tmp.file("full"), 1000), bytes);
  EXPECT_EQ(read_regular_file(tmp.file("full"), 1000, "job file"), bytes);
  fs.write_file(tmp.file("empty"), "");
  EXPECT_EQ(fs.read_file(tmp.file("empty"), 0), "");
  EXPECT_THROW(fs.read_file(tmp.file("full"), 999), FileError);
}

// A symbolic link is followed: what counts is the file it names.
TEST(PosixFileSystem, ALinkToADeviceIsRefusedLikeTheDevice) {
  TempDir tmp;
  ASSERT_EQ(::symlink("/dev/zero", tmp.file("zeros").c_str()), 0);
  expect_error<DataError>(
      [&] { read_regular_file(tmp.file("zeros"), kMaxModelFileBytes, "weights file"); },
      "cannot read weights file '" + tmp.file("zeros") +
          "': not a regular file (it is a character device)");
}

TEST(PathHelpers, SplitAndJoin) {
  EXPECT_EQ(join_path("a", "b"), "a/b");
  EXPECT_EQ(join_path("a/", "b"), "a/b");
  EXPECT_EQ(join_path("", "b"), "b");
  EXPECT_EQ(parent_directory("a/b/c"), "a/b");
  EXPECT_EQ(parent_directory("c"), ".");
  EXPECT_EQ(parent_directory("/c"), "/");
  EXPECT_EQ(base_name("a/b/c"), "c");
  EXPECT_EQ(base_name("c"), "c");
}

}  // namespace
}  // namespace dtrain::io
