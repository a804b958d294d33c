#include "io/file_system.h"

#include <gtest/gtest.h>

#include "testing/fault_fs.h"

namespace dtrain::io {
namespace {

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
  EXPECT_EQ(fs.read_file(join_path(dir, "one")), binary);
  EXPECT_EQ(fs.read_file(join_path(dir, "two")), "");
  EXPECT_EQ(fs.list_directory(dir), (std::vector<std::string>{"one", "two"}));

  fs.rename_file(join_path(dir, "one"), join_path(dir, "two"));
  EXPECT_EQ(fs.read_file(join_path(dir, "two")), binary);
  EXPECT_FALSE(fs.exists(join_path(dir, "one")));
  fs.remove_file(join_path(dir, "two"));
  EXPECT_TRUE(fs.list_directory(dir).empty());
}

TEST(PosixFileSystem, FailuresNameTheOperationAndPath) {
  TempDir tmp;
  FileSystem& fs = default_file_system();
  const std::string missing = tmp.file("missing");
  try {
    fs.read_file(missing);
    FAIL() << "reading a missing file succeeded";
  } catch (const FileError& e) {
    EXPECT_EQ(e.operation(), "read");
    EXPECT_EQ(e.path(), missing);
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(fs.remove_file(missing), FileError);
  EXPECT_THROW(fs.list_directory(missing), FileError);
  EXPECT_THROW(fs.rename_file(missing, tmp.file("x")), FileError);
  EXPECT_THROW(fs.read_file(tmp.path()), FileError);
  fs.write_file(tmp.file("plain"), "x");
  EXPECT_THROW(fs.create_directories(tmp.file("plain")), FileError);
  EXPECT_THROW(fs.create_directories(tmp.file("plain/sub")), FileError);
}

TEST(PosixFileSystem, ReadInputFileReportsDataError) {
  TempDir tmp;
  try {
    read_input_file(default_file_system(), tmp.file("nope.idx"));
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()),
              "cannot read '" + tmp.file("nope.idx") + "': No such file or directory");
  }
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
