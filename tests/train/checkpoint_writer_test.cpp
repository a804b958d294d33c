#include "train/checkpoint_writer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "testing/fault_fs.h"

namespace dtrain::train {
namespace {

using Fault = testing::FaultInjectingFileSystem;

io::Checkpoint checkpoint_at(int64_t step) {
  io::Checkpoint c;
  c.step = step;
  c.epoch = step / 10;
  c.metadata["note"] = "step " + std::to_string(step);
  StateDict model;
  model.insert("w", Tensor::full({3, 4}, static_cast<float>(step)));
  c.add_section("model", std::move(model));
  return c;
}

TEST(CheckpointWriter, WritesSubmittedCheckpointsInOrderAndPrunes) {
  testing::TempDir tmp;
  CheckpointWriter writer(tmp.path(), 3, io::default_file_system(), Logger::null());
  for (int64_t step = 1; step <= 5; ++step) writer.submit(checkpoint_at(step));
  writer.wait();
  EXPECT_EQ(writer.written(), 5);
  io::CheckpointDirectory dir(tmp.path(), 3, io::default_file_system(), Logger::null());
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{3, 4, 5}));
  for (int64_t step = 3; step <= 5; ++step) {
    const io::Checkpoint back = io::read_checkpoint(dir.path_for(step));
    EXPECT_EQ(back.step, step);
    EXPECT_EQ(back.metadata.at("note"), "step " + std::to_string(step));
    EXPECT_EQ(back.section("model").at("w").data()[11], static_cast<float>(step));
  }
}

TEST(CheckpointWriter, FailedWriteIsRethrownByTheNextSubmitOnce) {
  testing::TempDir tmp;
  Fault fs(io::default_file_system());
  fs.fail_nth(Fault::Op::kWrite, 1);
  CheckpointWriter writer(tmp.path(), 3, fs, Logger::null());
  writer.submit(checkpoint_at(1));  // fails in the background
  EXPECT_THROW(writer.submit(checkpoint_at(2)), CheckpointError);
  // Reported once: the next snapshot goes through.
  writer.submit(checkpoint_at(2));
  writer.wait();
  EXPECT_EQ(writer.written(), 1);
  io::CheckpointDirectory dir(tmp.path(), 3, io::default_file_system(), Logger::null());
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{2}));
}

TEST(CheckpointWriter, FailedWriteIsRethrownByWait) {
  testing::TempDir tmp;
  Fault fs(io::default_file_system());
  fs.fail_nth(Fault::Op::kSync, 1);
  CheckpointWriter writer(tmp.path(), 3, fs, Logger::null());
  writer.submit(checkpoint_at(7));
  try {
    writer.wait();
    ADD_FAILURE() << "wait() did not rethrow the failed write";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("ckpt-7.dtc"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(writer.wait());
  EXPECT_EQ(writer.written(), 0);
}

TEST(CheckpointWriter, DestructorFinishesTheQueuedWrite) {
  testing::TempDir tmp;
  {
    CheckpointWriter writer(tmp.path(), 3, io::default_file_system(), Logger::null());
    writer.submit(checkpoint_at(4));
  }
  EXPECT_EQ(io::read_checkpoint(tmp.file("ckpt-4.dtc")).step, 4);
}

TEST(CheckpointWriter, DestructorLogsAnErrorNobodyCollected) {
  testing::TempDir tmp;
  std::vector<std::string> warnings;
  Logger logger(LogLevel::kWarn,
                [&](LogLevel, std::string_view line) { warnings.emplace_back(line); });
  Fault fs(io::default_file_system());
  fs.fail_nth(Fault::Op::kRename, 1);
  {
    CheckpointWriter writer(tmp.path(), 3, fs, logger);
    writer.submit(checkpoint_at(9));
  }
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("the last checkpoint was not written"), std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find("ckpt-9.dtc"), std::string::npos) << warnings[0];
}

TEST(CheckpointWriter, ADestroyedIdleWriterJoinsAtOnce) {
  testing::TempDir tmp;
  CheckpointWriter writer(tmp.path(), 1, io::default_file_system(), Logger::null());
  EXPECT_EQ(writer.written(), 0);
}

}  // namespace
}  // namespace dtrain::train
