#include "io/checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>

#include "core/crc32c.h"
#include "io/atomic_file.h"
#include "testing/fault_fs.h"
#include "testing/hostile_files.h"

namespace dtrain::io {
namespace {

using dtrain::testing::FaultInjectingFileSystem;
using dtrain::testing::SimulatedCrash;
using dtrain::testing::TempDir;
using Op = FaultInjectingFileSystem::Op;

Checkpoint sample_checkpoint(int64_t step) {
  Checkpoint ck;
  ck.step = step;
  ck.epoch = step / 10;
  ck.metadata["rng"] = "1 2 3 4";
  ck.metadata["job"] = "mnist";
  StateDict model;
  model.insert("fc.weight",
               Tensor::from_vector({1.0f, -2.0f, static_cast<float>(step), 4.0f}, {2, 2}));
  model.insert("fc.bias", Tensor::from_vector({0.5f, -0.5f}, {2}));
  model.metadata()["bn.num_batches_tracked"] = "17";
  StateDict optimizer;
  optimizer.insert("m.0", Tensor::scalar(0.25f));
  optimizer.insert("v.0", Tensor::zeros({0}));
  optimizer.metadata()["t"] = "99";
  ck.add_section("model", std::move(model));
  ck.add_section("optimizer", std::move(optimizer));
  ck.add_section("trainer", StateDict{});
  return ck;
}

void expect_same(const Checkpoint& got, const Checkpoint& want) {
  EXPECT_EQ(got.step, want.step);
  EXPECT_EQ(got.epoch, want.epoch);
  EXPECT_EQ(got.metadata, want.metadata);
  ASSERT_EQ(got.sections.size(), want.sections.size());
  for (size_t s = 0; s < want.sections.size(); ++s) {
    const auto& [name, dict] = want.sections[s];
    EXPECT_EQ(got.sections[s].first, name);
    const StateDict& back = got.sections[s].second;
    EXPECT_EQ(back.metadata(), dict.metadata());
    ASSERT_EQ(back.size(), dict.size());
    for (size_t i = 0; i < dict.size(); ++i) {
      EXPECT_EQ(back.entries()[i].first, dict.entries()[i].first);
      const Tensor& a = back.entries()[i].second;
      const Tensor& b = dict.entries()[i].second;
      ASSERT_EQ(a.shape(), b.shape());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), b.numel() * sizeof(float)), 0);
    }
  }
}

std::string decode_error(std::string_view bytes) {
  try {
    decode_checkpoint(bytes, "run/ckpt-7.dtc");
  } catch (const CheckpointError& e) {
    EXPECT_EQ(e.path(), "run/ckpt-7.dtc");
    return e.what();
  }
  return "";
}

// Rewrites the trailing CRC so that a deliberate change passes the checksum.
void reseal(std::string& bytes) {
  const uint32_t crc = crc32c(bytes.data(), bytes.size() - 4);
  std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
}

TEST(Checkpoint, RoundTripsThroughAFile) {
  TempDir tmp;
  const Checkpoint ck = sample_checkpoint(1200);
  write_checkpoint(ck, tmp.file("c.dtc"));
  expect_same(read_checkpoint(tmp.file("c.dtc")), ck);
}

TEST(Checkpoint, FrameMatchesTheDocumentedLayout) {
  const std::string bytes = encode_checkpoint(sample_checkpoint(5));
  ASSERT_GE(bytes.size(), 28u);
  EXPECT_EQ(bytes.substr(0, 8), "DTRNCKPT");
  uint32_t version = 0, flags = 0, crc = 0;
  uint64_t body = 0;
  int64_t step = 0, epoch = -1;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&flags, bytes.data() + 12, 4);
  std::memcpy(&body, bytes.data() + 16, 8);
  std::memcpy(&step, bytes.data() + 24, 8);
  std::memcpy(&epoch, bytes.data() + 32, 8);
  std::memcpy(&crc, bytes.data() + bytes.size() - 4, 4);
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(flags, 0u);
  EXPECT_EQ(body + 28, bytes.size());
  EXPECT_EQ(step, 5);
  EXPECT_EQ(epoch, 0);
  EXPECT_EQ(crc, crc32c(bytes.data(), bytes.size() - 4));
}

// The worked example of docs/checkpoint-format.md, byte for byte.
TEST(Checkpoint, EncodesTheDocumentedExample) {
  Checkpoint ck;
  ck.step = 5;
  StateDict model;
  model.insert("b", Tensor::from_vector({1.0f, 2.0f}, {2}));
  ck.add_section("model", std::move(model));
  const std::string bytes = encode_checkpoint(ck);
  const unsigned char want[] = {
      0x44, 0x54, 0x52, 0x4e, 0x43, 0x4b, 0x50, 0x54,        // "DTRNCKPT"
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,        // version, flags
      0x42, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,        // body length 66
      0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,        // step
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,        // epoch
      0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,        // metadata, sections
      0x05, 0x00, 0x00, 0x00, 0x6d, 0x6f, 0x64, 0x65, 0x6c,  // "model"
      0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,        // section metadata, tensors
      0x01, 0x00, 0x00, 0x00, 0x62,                          // "b"
      0x01, 0x00, 0x00, 0x00,                                // ndim
      0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,        // extent
      0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40,        // 1.0f, 2.0f
  };
  ASSERT_EQ(bytes.size(), sizeof(want) + 4);
  EXPECT_EQ(std::memcmp(bytes.data(), want, sizeof(want)), 0);
  uint32_t crc = 0;
  std::memcpy(&crc, bytes.data() + sizeof(want), 4);
  EXPECT_EQ(crc, crc32c(want, sizeof(want)));
}

TEST(Checkpoint, SectionLookupNamesWhatIsThere) {
  const Checkpoint ck = sample_checkpoint(3);
  EXPECT_EQ(ck.section("optimizer").metadata().at("t"), "99");
  try {
    ck.section("ema");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()),
              "checkpoint (step 3): no section 'ema' (it has 'model', 'optimizer', 'trainer')");
  }
  Checkpoint copy = ck;
  EXPECT_THROW(copy.add_section("model", StateDict{}), UsageError);
}

TEST(Checkpoint, EveryTruncationIsRefused) {
  const std::string bytes = encode_checkpoint(sample_checkpoint(7));
  EXPECT_EQ(decode_error(""), "checkpoint run/ckpt-7.dtc: the file is empty");
  EXPECT_EQ(decode_error(bytes.substr(0, 20)),
            "checkpoint run/ckpt-7.dtc: truncated: 20 bytes, a checkpoint has at least 28");
  EXPECT_EQ(decode_error(bytes.substr(0, 100)),
            fmt::format("checkpoint run/ckpt-7.dtc: truncated: the header announces a body of {} "
                        "bytes, the file holds 72",
                        bytes.size() - 28));
  for (size_t size = 0; size < bytes.size(); ++size) {
    EXPECT_NE(decode_error(bytes.substr(0, size)), "") << size;
  }
  EXPECT_EQ(decode_error(bytes + "xy"),
            "checkpoint run/ckpt-7.dtc: 2 unexpected bytes after the checksum");
}

// CRC-32C detects every error burst up to 32 bits, so any single changed
// byte anywhere must be refused.
TEST(Checkpoint, EveryFlippedByteIsRefused) {
  const std::string bytes = encode_checkpoint(sample_checkpoint(7));
  for (size_t at = 0; at < bytes.size(); ++at) {
    for (const unsigned char mask : {0x01, 0x10, 0x80, 0xff}) {
      std::string bad = bytes;
      bad[at] = static_cast<char>(static_cast<unsigned char>(bad[at]) ^ mask);
      EXPECT_NE(decode_error(bad), "") << "byte " << at << " ^ " << int{mask};
    }
  }
  std::string bad = bytes;
  bad[40] ^= 1;
  std::string message = decode_error(bad);
  EXPECT_NE(message.find("corrupt: CRC-32C is 0x"), std::string::npos) << message;
}

TEST(Checkpoint, WrongMagicVersionAndFlagsAreNamed) {
  std::string bytes = encode_checkpoint(sample_checkpoint(7));
  std::string other = bytes;
  other[0] = 'X';
  EXPECT_EQ(decode_error(other),
            "checkpoint run/ckpt-7.dtc: not a dtrain checkpoint: the file "
            "does not begin with \"DTRNCKPT\"");
  std::string v2 = bytes;
  v2[8] = 2;
  reseal(v2);
  EXPECT_EQ(decode_error(v2),
            "checkpoint run/ckpt-7.dtc: format version 2, this build reads version 1");
  std::string flagged = bytes;
  flagged[12] = 4;
  reseal(flagged);
  EXPECT_EQ(decode_error(flagged),
            "checkpoint run/ckpt-7.dtc: unknown flags 0x00000004 (version "
            "1 defines none)");
}

// A body that passes the CRC but lies about its sizes (a writer bug, or a
// forged file) is refused without reading out of bounds.
TEST(Checkpoint, MalformedBodyBehindAValidChecksumIsRefused) {
  const std::string bytes = encode_checkpoint(sample_checkpoint(7));
  // Body offset 16 is the metadata count; claim a huge one.
  std::string lying = bytes;
  const uint32_t huge = 0xfffffff0u;
  std::memcpy(lying.data() + 24 + 16, &huge, 4);
  reseal(lying);
  const std::string message = decode_error(lying);
  EXPECT_NE(message.find("checkpoint run/ckpt-7.dtc (step 7): malformed body:"), std::string::npos)
      << message;
  for (size_t at = 24; at + 4 < bytes.size(); ++at) {
    std::string bad = bytes;
    bad[at] = static_cast<char>(static_cast<unsigned char>(bad[at]) ^ 0xff);
    reseal(bad);
    try {
      decode_checkpoint(bad, "x");  // may decode (a changed value), must not crash
    } catch (const CheckpointError&) {
    }
  }
}

// Issue #18: a forged negative step made the trainer exit 2; it is a
// malformed file like any other.
TEST(Checkpoint, NegativeStepsAndEpochsAreRefused) {
  Checkpoint negative_step = sample_checkpoint(7);
  negative_step.step = -5;
  EXPECT_EQ(decode_error(encode_checkpoint(negative_step)),
            "checkpoint run/ckpt-7.dtc: malformed body: step -5 is negative");
  Checkpoint negative_epoch = sample_checkpoint(7);
  negative_epoch.epoch = -1;
  EXPECT_EQ(decode_error(encode_checkpoint(negative_epoch)),
            "checkpoint run/ckpt-7.dtc (step 7): malformed body: epoch -1 is negative");
  Checkpoint huge = sample_checkpoint(7);
  huge.step = int64_t{1} << 62;  // valid in the file; the job's bounds refuse it (check_resume)
  EXPECT_EQ(decode_checkpoint(encode_checkpoint(huge), "x").step, int64_t{1} << 62);
}

// Issue #18: a ckpt-N.dtc that is /dev/zero, /dev/urandom or a FIFO grew
// memory without end or hung; it is refused at once.
TEST(Checkpoint, ReadingRefusesDevicesFifosFoldersAndOversizedFiles) {
  TempDir tmp;
  for (const uint64_t limit : {uint64_t{1000}, kMaxModelFileBytes}) {
    for (const auto& bad : dtrain::testing::hostile_paths(tmp, limit)) {
      SCOPED_TRACE(bad.path);
      try {
        if (limit == kMaxModelFileBytes) {
          read_checkpoint(bad.path);
        } else {
          read_checkpoint(bad.path, default_file_system(), limit);
        }
        ADD_FAILURE() << "read";
      } catch (const CheckpointError& e) {
        EXPECT_EQ(std::string(e.what()), "checkpoint " + bad.path + ": cannot read: " + bad.reason);
      }
    }
  }
}

TEST(Checkpoint, IoFailuresAreCheckpointErrors) {
  TempDir tmp;
  try {
    read_checkpoint(tmp.file("ckpt-3.dtc"));
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_EQ(std::string(e.what()),
              "checkpoint " + tmp.file("ckpt-3.dtc") + ": cannot read: No such file or directory");
  }
  FaultInjectingFileSystem fs(default_file_system());
  fs.fail_nth(Op::kSync, 1);
  try {
    write_checkpoint(sample_checkpoint(3), tmp.file("ckpt-3.dtc"), fs);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_EQ(e.step(), 3);
    EXPECT_NE(std::string(e.what()).find("write failed"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(default_file_system().list_directory(tmp.path()).empty());
}

TEST(Checkpoint, RngStateRoundTripsAsText) {
  Rng rng(77);
  rng.normal();
  const std::string text = encode_rng_state(rng.state());
  EXPECT_EQ(text.size(), 67u);
  Rng restored(0);
  restored.set_state(decode_rng_state(text));
  EXPECT_EQ(restored.next_u64(), rng.next_u64());
  for (const std::string& bad :
       std::vector<std::string>{"", "1 2 3 4", text.substr(0, 66) + "g", text + " ",
                                text.substr(0, 16) + "_" + text.substr(17)}) {
    EXPECT_THROW(decode_rng_state(bad), DataError) << bad;
  }
}

struct CapturedLog {
  std::vector<std::string> lines;
  Logger logger{LogLevel::kDebug,
                [this](LogLevel, std::string_view line) { lines.emplace_back(line); }};
};

TEST(CheckpointDirectory, KeepsTheLastKAndIgnoresOtherNames) {
  TempDir tmp;
  CapturedLog log;
  CheckpointDirectory dir(tmp.file("run/ckpts"), 3, default_file_system(), log.logger);
  EXPECT_TRUE(dir.steps().empty());
  EXPECT_FALSE(dir.load_latest().has_value());
  for (const int64_t step : {10, 20, 30, 40, 50}) {
    EXPECT_EQ(dir.write(sample_checkpoint(step)),
              tmp.file("run/ckpts/ckpt-" + std::to_string(step) + ".dtc"));
  }
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{30, 40, 50}));
  FileSystem& fs = default_file_system();
  fs.write_file(tmp.file("run/ckpts/ckpt-90.dtc.tmp-0123456789abcdef"), "crashed writer");
  fs.write_file(tmp.file("run/ckpts/ckpt-x.dtc"), "junk");
  fs.write_file(tmp.file("run/ckpts/notes.txt"), "junk");
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{30, 40, 50}));
  const auto found = dir.load_latest();
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->path, dir.path_for(50));
  expect_same(found->checkpoint, sample_checkpoint(50));
  EXPECT_TRUE(log.lines.empty());
  // A step older than the kept ones is written and immediately pruned as the oldest.
  dir.write(sample_checkpoint(5));
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{30, 40, 50}));
  EXPECT_THROW(CheckpointDirectory(tmp.path(), 0, fs, log.logger), UsageError);
}

TEST(CheckpointDirectory, SetAsideMovesEveryCheckpointAndReplacesAnEarlierSetAside) {
  TempDir tmp;
  CapturedLog log;
  CheckpointDirectory dir(tmp.file("run"), 5, default_file_system(), log.logger);
  EXPECT_FALSE(dir.set_aside("earlier-run").has_value());  // no folder yet
  for (const int64_t step : {3, 7}) dir.write(sample_checkpoint(step));
  const auto first = dir.set_aside("earlier-run");
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->folder, tmp.file("run/earlier-run"));
  EXPECT_EQ(first->steps, (std::vector<int64_t>{3, 7}));
  EXPECT_TRUE(dir.steps().empty());
  const CheckpointDirectory aside(first->folder, 5, default_file_system(), log.logger);
  EXPECT_EQ(aside.steps(), (std::vector<int64_t>{3, 7}));
  EXPECT_FALSE(dir.set_aside("earlier-run").has_value());  // nothing left to move
  // A second fresh run: the earlier set-aside files go, the new ones take their place.
  dir.write(sample_checkpoint(11));
  const auto second = dir.set_aside("earlier-run");
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->steps, (std::vector<int64_t>{11}));
  EXPECT_EQ(aside.steps(), (std::vector<int64_t>{11}));
  CheckpointDirectory reread(first->folder, 5, default_file_system(), log.logger);
  const auto found = reread.load_latest();
  ASSERT_TRUE(found.has_value());
  expect_same(found->checkpoint, sample_checkpoint(11));
}

TEST(CheckpointDirectory, SkipsACorruptNewestCheckpointWithAWarning) {
  TempDir tmp;
  CapturedLog log;
  FileSystem& fs = default_file_system();
  CheckpointDirectory dir(tmp.path(), 5, fs, log.logger);
  for (const int64_t step : {1, 2, 3}) dir.write(sample_checkpoint(step));
  std::string bytes = fs.read_file(dir.path_for(3), kUnlimitedBytes);
  bytes[bytes.size() / 2] ^= 0x40;
  fs.write_file(dir.path_for(3), bytes);
  fs.write_file(dir.path_for(2), bytes.substr(0, 30));

  const auto found = dir.load_latest();
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->checkpoint.step, 1);
  ASSERT_EQ(log.lines.size(), 2u);
  EXPECT_NE(log.lines[0].find(dir.path_for(3) + ": corrupt"), std::string::npos) << log.lines[0];
  EXPECT_NE(log.lines[1].find(dir.path_for(2) + ": truncated"), std::string::npos) << log.lines[1];
  EXPECT_NE(log.lines[0].find("moved it to " + tmp.file("rejected/ckpt-3.dtc")), std::string::npos)
      << log.lines[0];
  // Moved aside, byte for byte, not deleted.
  EXPECT_EQ(dir.steps(), (std::vector<int64_t>{1}));
  EXPECT_EQ(fs.read_file(tmp.file("rejected/ckpt-3.dtc"), kUnlimitedBytes), bytes);
  EXPECT_EQ(fs.read_file(tmp.file("rejected/ckpt-2.dtc"), kUnlimitedBytes), bytes.substr(0, 30));

  fs.write_file(dir.path_for(1), "");
  EXPECT_FALSE(dir.load_latest().has_value());
}

// A crash at any step of writing checkpoint N, then a power loss, leaves a
// directory whose newest valid checkpoint is N or N-1.
TEST(CheckpointDirectory, CrashAtEveryStepLeavesAValidCheckpoint) {
  int64_t steps = 0;
  {
    TempDir tmp;
    FaultInjectingFileSystem fs(default_file_system());
    CheckpointDirectory dir(tmp.path(), 2, fs, Logger::null());
    dir.write(sample_checkpoint(1));
    dir.write(sample_checkpoint(2));
    const int64_t before = fs.mutations();
    dir.write(sample_checkpoint(3));
    steps = fs.mutations() - before;
  }
  ASSERT_GE(steps, 5);
  for (int64_t crash_at = 1; crash_at <= steps; ++crash_at) {
    SCOPED_TRACE(::testing::Message() << "crash at mutation " << crash_at << " of " << steps);
    TempDir tmp;
    FaultInjectingFileSystem fs(default_file_system());
    CheckpointDirectory dir(tmp.path(), 2, fs, Logger::null());
    dir.write(sample_checkpoint(1));
    dir.write(sample_checkpoint(2));
    fs.crash_at(crash_at);
    EXPECT_THROW(dir.write(sample_checkpoint(3)), SimulatedCrash);
    fs.power_loss();
    const auto found = dir.load_latest();
    ASSERT_TRUE(found.has_value());
    EXPECT_TRUE(found->checkpoint.step == 2 || found->checkpoint.step == 3)
        << found->checkpoint.step;
    expect_same(found->checkpoint, sample_checkpoint(found->checkpoint.step));
    dir.write(sample_checkpoint(4));
    EXPECT_EQ(dir.load_latest()->checkpoint.step, 4);
    for (const std::string& name : default_file_system().list_directory(tmp.path())) {
      EXPECT_FALSE(is_temporary_file(name)) << name;
    }
  }
}

}  // namespace
}  // namespace dtrain::io
