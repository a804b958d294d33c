// Opening IDX files (issue #18, item 8): a path that is a device, a FIFO or a
// folder, or a file over io::kMaxDataFileBytes, is refused at once with a
// DataError, by each reader, before anything is allocated or decoded.
#include <gtest/gtest.h>

#include "data/idx.h"
#include "testing/expect_error.h"
#include "testing/fault_fs.h"
#include "testing/hostile_files.h"

namespace dtrain::data {
namespace {

TEST(IdxOpen, DevicesFifosFoldersAndOversizedFilesAreRefused) {
  testing::TempDir tmp;
  for (const auto& bad : testing::hostile_paths(tmp, io::kMaxDataFileBytes)) {
    SCOPED_TRACE(bad.path);
    const std::string message = "cannot read IDX file '" + bad.path + "': " + bad.reason;
    testing::expect_error<DataError>([&] { read_idx_images(bad.path); }, message);
    testing::expect_error<DataError>([&] { read_idx_labels(bad.path); }, message);
    testing::expect_error<DataError>([&] { read_idx_dataset(bad.path, bad.path); }, message);
  }
}

}  // namespace
}  // namespace dtrain::data
