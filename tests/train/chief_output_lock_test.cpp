// ChiefOutputLock (issue #19): in an elastic job whose hosts share one
// output folder, the folder's lock follows the role of rank 0 across
// generations. Three workers are simulated in one process (flock conflicts
// between two opens of one file in one process as between processes), each
// with its own ChiefOutputLock and a record naming it; generations are
// injected as "which worker is rank 0". After each one exactly that worker
// holds the lock and the lock file names it; a new rank 0 waits for its
// predecessor to let go; one that cannot get the lock within its bound
// throws naming the folder, the holder and its slot.
#include "train/chief_output_lock.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "io/file_system.h"
#include "io/output_lock.h"
#include "testing/fault_fs.h"

namespace dtrain::train {
namespace {

using namespace std::chrono_literals;

io::LockRecord record_of(const std::string& name) {
  return io::LockRecord{4242, "node7", "2024-05-01T12:00:00Z", name};
}

// The command line of the record in `folder`'s lock file; "" when released.
std::string holder_of(const std::string& folder) {
  const std::string text = io::default_file_system().read_file(
      folder + "/" + std::string(io::OutputLock::kFileName), io::kUnlimitedBytes);
  const std::optional<io::LockRecord> record = io::decode_lock_record(text);
  return record ? record->command_line : "";
}

ChiefOutputLockOptions options_for(const std::string& folder, int slot,
                                   std::chrono::milliseconds wait) {
  return {folder, record_of("worker " + std::to_string(slot)), wait, slot};
}

TEST(ChiefOutputLock, FollowsRankZeroAcrossInjectedGenerations) {
  testing::TempDir dir;
  const std::string folder = dir.file("shared");
  std::vector<std::unique_ptr<ChiefOutputLock>> workers;
  for (int slot = 0; slot < 3; ++slot) {
    workers.push_back(
        std::make_unique<ChiefOutputLock>(options_for(folder, slot, 0ms), Logger::null()));
  }
  // Rank 0 of each generation: worker 0 first, then 1 (0 died or was
  // demoted), 1 again (a re-formation that kept it), 2, and 0 again.
  const std::vector<int> rank_zero = {0, 1, 1, 2, 0};
  for (size_t g = 0; g < rank_zero.size(); ++g) {
    // The demoted let go first (with a wait of 0 the new rank 0 would fail
    // otherwise); the trainer's order within one process is the same.
    for (int slot = 0; slot < 3; ++slot) {
      if (slot != rank_zero[g]) workers[slot]->follow(false);
    }
    workers[rank_zero[g]]->follow(true);
    for (int slot = 0; slot < 3; ++slot) {
      EXPECT_EQ(workers[slot]->held(), slot == rank_zero[g]) << "generation " << g;
    }
    EXPECT_EQ(holder_of(folder), "worker " + std::to_string(rank_zero[g])) << "generation " << g;
  }
  workers.clear();
  EXPECT_EQ(holder_of(folder), "");  // released cleanly at the end
}

TEST(ChiefOutputLock, ANewRankZeroWaitsForItsPredecessorToLetGo) {
  testing::TempDir dir;
  const std::string folder = dir.file("shared");
  ChiefOutputLock old_chief(options_for(folder, 0, 0ms), Logger::null());
  old_chief.follow(true);
  // Bound far beyond the release below: the outcome does not depend on
  // which thread runs first.
  ChiefOutputLock new_chief(options_for(folder, 1, 60s), Logger::null());
  std::thread promoted([&new_chief] { new_chief.follow(true); });
  old_chief.follow(false);
  promoted.join();
  EXPECT_FALSE(old_chief.held());
  EXPECT_TRUE(new_chief.held());
  EXPECT_EQ(holder_of(folder), "worker 1");
}

TEST(ChiefOutputLock, ARankZeroThatCannotGetTheLockThrowsNamingFolderHolderAndSlot) {
  testing::TempDir dir;
  const std::string folder = dir.file("shared");
  const io::OutputLock other =
      io::OutputLock::acquire(folder, record_of("dtrain train other.toml"), Logger::null());
  ChiefOutputLock chief(options_for(folder, 3, 300ms), Logger::null());
  try {
    chief.follow(true);
    ADD_FAILURE() << "follow(true) took a lock another run holds";
  } catch (const UsageError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("slot 3 became rank 0"), std::string::npos) << what;
    EXPECT_NE(what.find("'" + folder + "'"), std::string::npos) << what;
    EXPECT_NE(what.find("dtrain train other.toml"), std::string::npos) << what;
    EXPECT_NE(what.find("waiting 300 ms"), std::string::npos) << what;
  }
  EXPECT_FALSE(chief.held());
  EXPECT_EQ(holder_of(folder), "dtrain train other.toml");
  // Not rank 0: nothing to take, nothing thrown.
  chief.follow(false);
  EXPECT_FALSE(chief.held());
}

}  // namespace
}  // namespace dtrain::train
