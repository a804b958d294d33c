// Reading the job file (issue #18, item 8): `dtrain train /dev/zero` (or
// /dev/urandom, a FIFO) grew memory without end or hung. Only a regular file
// of at most 16 MiB is read; anything else is a ConfigError (exit code 2) at
// once. A readable file is parsed with its path as the source name.
#include <gtest/gtest.h>

#include "core/error.h"
#include "io/file_system.h"
#include "testing/expect_error.h"
#include "testing/fault_fs.h"
#include "testing/hostile_files.h"
#include "train/job_file.h"

namespace dtrain::train {
namespace {

TEST(JobFileRead, DevicesFifosFoldersAndOversizedFilesAreRefused) {
  testing::TempDir tmp;
  for (const auto& bad : testing::hostile_paths(tmp, uint64_t{16} << 20)) {
    SCOPED_TRACE(bad.path);
    testing::expect_error<ConfigError>([&] { read_job_file(bad.path, {}); },
                                       "cannot read job file '" + bad.path + "': " + bad.reason);
  }
  testing::expect_error<ConfigError>(
      [&] { read_job_file(tmp.file("none.toml"), {}); },
      "cannot read job file '" + tmp.file("none.toml") + "': No such file or directory");
}

TEST(JobFileRead, ParseErrorsNameTheFile) {
  testing::TempDir tmp;
  io::default_file_system().write_file(tmp.file("job.toml"), "[job]\nname = \n");
  try {
    read_job_file(tmp.file("job.toml"), {});
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(tmp.file("job.toml") + ":2", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace dtrain::train
