// Crash safety of checkpoints against real process deaths: a process
// SIGKILLed at random moments while it writes checkpoints (in the middle of a
// write, an fsync, a rename or the pruning of old files) always leaves a
// folder whose newest checkpoint reads back intact, with the content that was
// written for its step. First with io::CheckpointDirectory driven by a child
// of this test binary (CheckpointCrash.DISABLED_Writer), then with the real
// dtrain binary, which must resume from what the killed run left.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "core/log.h"
#include "core/rng.h"
#include "ft_test_util.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/file_system.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kStarted = "DTRAIN_CHILD_STARTED";
constexpr int64_t kKeepLast = 2;
// 3 MiB of tensor data per checkpoint, in two sections.
constexpr int64_t kWeights = 512 * 1024;
constexpr int64_t kMoments = 256 * 1024;

// The value of element i of tensor `which` in the checkpoint of `step`.
float value_at(int64_t step, int which, int64_t i) {
  uint64_t x = static_cast<uint64_t>(step) * 0x9E3779B97F4A7C15ULL +
               static_cast<uint64_t>(which) * 0xBF58476D1CE4E5B9ULL + static_cast<uint64_t>(i);
  x ^= x >> 31;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 29;
  return static_cast<float>(x & 0xFFFFFF) / 1024.0f;  // exact in a float
}

Tensor tensor_for(int64_t step, int which, int64_t n) {
  Tensor t = Tensor::empty({n});
  float* p = t.data();
  for (int64_t i = 0; i < n; ++i) p[i] = value_at(step, which, i);
  return t;
}

// Everything the writer puts in the checkpoint of `step`.
io::Checkpoint checkpoint_for(int64_t step) {
  io::Checkpoint c;
  c.step = step;
  c.epoch = step / 5;
  c.metadata["step_text"] = "step " + std::to_string(step);
  c.metadata["rng"] = io::encode_rng_state(Rng(static_cast<uint64_t>(step)).state());
  StateDict model;
  model.insert("w", tensor_for(step, 0, kWeights));
  model.insert("b", tensor_for(step, 1, 97));
  StateDict optimizer;
  optimizer.insert("m", tensor_for(step, 2, kMoments));
  optimizer.metadata()["t"] = std::to_string(step);
  c.add_section("model", std::move(model));
  c.add_section("optimizer", std::move(optimizer));
  return c;
}

// Non-fatal failures naming what differs from checkpoint_for(step).
void expect_checkpoint_of_step(const io::Checkpoint& c, int64_t step, const std::string& path) {
  const io::Checkpoint want = checkpoint_for(step);
  EXPECT_EQ(c.step, step) << path;
  EXPECT_EQ(c.epoch, want.epoch) << path;
  EXPECT_EQ(c.metadata, want.metadata) << path;
  ASSERT_EQ(c.sections.size(), want.sections.size()) << path;
  for (size_t s = 0; s < want.sections.size(); ++s) {
    const auto& [name, dict] = want.sections[s];
    ASSERT_EQ(c.sections[s].first, name) << path;
    const StateDict& got = c.sections[s].second;
    EXPECT_EQ(got.metadata(), dict.metadata()) << path << " section " << name;
    ASSERT_EQ(got.size(), dict.size()) << path << " section " << name;
    for (size_t e = 0; e < dict.entries().size(); ++e) {
      const auto& [tname, t] = dict.entries()[e];
      ASSERT_EQ(got.entries()[e].first, tname) << path;
      const Tensor& u = got.entries()[e].second;
      ASSERT_EQ(u.numel(), t.numel()) << path << " " << name << "." << tname;
      const std::vector<float> a = t.to_vector(), b = u.to_vector();
      EXPECT_TRUE(a == b) << path << " " << name << "." << tname << " differs from step " << step;
    }
  }
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);  // test harness only
  return v ? v : fallback;
}

// ------------------------------------------------------------ child side

// Writes the checkpoints of steps START, START+1, ... into DIR with
// keep_last 2, printing "writing <step>" before each CheckpointDirectory::write
// and "wrote <step> in <microseconds> us" after it, until killed (or a
// generous bound, so a forgotten child ends by itself).
TEST(CheckpointCrash, DISABLED_Writer) {
  const std::string dir = env_or("DTRAIN_TEST_DIR", "");
  ASSERT_FALSE(dir.empty());
  const int64_t start = std::stoll(env_or("DTRAIN_TEST_START", "1"));
  io::CheckpointDirectory ckpts(dir, kKeepLast, io::default_file_system(), Logger::null());
  std::printf("%s\n", kStarted);
  std::fflush(stdout);
  for (int64_t step = start; step < start + 2000; ++step) {
    const io::Checkpoint c = checkpoint_for(step);
    // How long encoding takes, before write() creates any file: the parent
    // aims its kills after that part.
    const auto e0 = Clock::now();
    const size_t bytes = io::encode_checkpoint(c).size();
    const auto encode_us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - e0).count();
    std::printf("writing %lld\n", static_cast<long long>(step));
    std::fflush(stdout);
    const auto t0 = Clock::now();
    ckpts.write(c);
    const auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
    std::printf("wrote %lld in %lld us, %zu bytes encoded in %lld us\n",
                static_cast<long long>(step), static_cast<long long>(us), bytes,
                static_cast<long long>(encode_us));
    std::fflush(stdout);
  }
}

// ------------------------------------------------------------ parent side

// The numbers in the complete lines of `output` that start with `word`
// ("writing 12", "wrote 12 in 3000 us, 3146368 bytes encoded in 2000 us"),
// in order: the `index`-th number of each line (0: the step).
std::vector<int64_t> numbers_after(const std::string& output, const std::string& word,
                                   int index = 0) {
  std::vector<int64_t> values;
  size_t at = 0;
  while (at < output.size()) {
    const size_t end = output.find('\n', at);
    if (end == std::string::npos) break;  // a line cut by the kill
    const std::string line = output.substr(at, end - at);
    if (line.rfind(word + " ", 0) == 0) {
      std::vector<int64_t> numbers;
      for (size_t i = 0; i < line.size();) {
        if (std::isdigit(static_cast<unsigned char>(line[i]))) {
          size_t used = 0;
          numbers.push_back(std::stoll(line.substr(i), &used));
          i += used;
        } else {
          ++i;
        }
      }
      if (static_cast<size_t>(index) < numbers.size())
        values.push_back(numbers[static_cast<size_t>(index)]);
    }
    at = end + 1;
  }
  return values;
}

std::vector<int64_t> written_steps(const std::string& output) {
  return numbers_after(output, "wrote");
}

// Reads the child's output until `count` lines starting with `word` arrived;
// false at EOF or when `deadline` passes.
bool wait_for_lines(testing::ChildProcess& child, const std::string& word, size_t count,
                    Deadline deadline) {
  while (numbers_after(child.output(), word).size() < count) {
    if (deadline.expired() || !child.read_some(100))
      return numbers_after(child.output(), word).size() >= count;
  }
  return true;
}

void spin_for(std::chrono::microseconds d) {
  const auto until = Clock::now() + d;
  while (Clock::now() < until) {
  }
}

// The names of the atomic writer's temporary files in `dir`.
std::vector<std::string> temporary_files(const std::string& dir) {
  std::vector<std::string> names;
  if (!std::filesystem::exists(dir)) return names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (io::is_temporary_file(name)) names.push_back(name);
  }
  return names;
}

TEST(CheckpointCrash, KilledWriterAlwaysLeavesAValidNewestCheckpoint) {
  constexpr int kKills = 40;
  constexpr uint64_t kSeed = 20261129;
  testing::TempDir tmp;
  const std::string dir = tmp.file("ckpts");
  Rng rng(kSeed);
  std::vector<std::string> warnings;
  Logger logger(LogLevel::kWarn, [&](LogLevel, std::string_view m) { warnings.emplace_back(m); });
  io::CheckpointDirectory ckpts(dir, kKeepLast, io::default_file_system(), logger);

  int64_t next_start = 1;        // the first step the next writer writes
  int64_t newest_durable = 0;    // the newest step some writer reported written
  int landed_mid_write = 0;      // kills that left a temporary file behind
  size_t files_before = 0;       // checkpoint files after the previous kill
  std::set<std::string> leaked;  // temporaries left between a rename and its clean-up
  double write_us = 2000.0;      // a write's duration, as the writers measure it
  double encode_us = 0.0;        // the part of it spent encoding
  for (int kill = 0; kill < kKills; ++kill) {
    SCOPED_TRACE("kill " + std::to_string(kill) + " (seed " + std::to_string(kSeed) + ")");
    testing::ChildProcess child = testing::spawn_test_child(
        "CheckpointCrash.DISABLED_Writer",
        {{"DTRAIN_TEST_DIR", dir}, {"DTRAIN_TEST_START", std::to_string(next_start)}});
    ASSERT_TRUE(child.wait_for_line(kStarted, Deadline::after(60s))) << child.output();
    // Let 0-2 writes complete; when the next one starts, wait a random part
    // of a write's duration (as the writer measured it), then kill. Most
    // kills aim at the file operations: they wait for the write's temporary
    // file to appear, then a random part of the time the rest takes.
    const size_t lines = static_cast<size_t>(rng.below(3));
    const std::vector<std::string> stale = temporary_files(dir);
    ASSERT_TRUE(wait_for_lines(child, "writing", lines + 1, Deadline::after(60s)))
        << child.output();
    if (rng.below(4) == 0) {
      spin_for(std::chrono::microseconds(static_cast<int64_t>(rng.uniform() * 1.2 * write_us)));
    } else {
      const Deadline appear = Deadline::after(10s);
      bool created = false;
      while (!created && !appear.expired()) {
        for (const std::string& name : temporary_files(dir)) {
          if (std::find(stale.begin(), stale.end(), name) == stale.end()) created = true;
        }
      }
      spin_for(std::chrono::microseconds(
          static_cast<int64_t>(rng.uniform() * 1.1 * (write_us - encode_us))));
    }
    child.signal(SIGKILL);
    const std::optional<testing::ExitStatus> status = child.wait(Deadline::after(30s));
    ASSERT_TRUE(status.has_value());
    if (status->exited) {
      FAIL() << "the writer ended before the kill: " << status->describe() << "\n"
             << child.output();
    }
    ASSERT_EQ(status->signal, SIGKILL);

    const std::vector<int64_t> reported = written_steps(child.output());
    for (int64_t us : numbers_after(child.output(), "wrote", 1))
      write_us = 0.7 * write_us + 0.3 * double(us);
    for (int64_t us : numbers_after(child.output(), "wrote", 3))
      encode_us = 0.7 * encode_us + 0.3 * double(us);
    encode_us = std::min(encode_us, write_us);
    if (!reported.empty()) newest_durable = reported.back();
    // The write after the last reported one may have completed too.
    const int64_t newest_possible = (reported.empty() ? next_start - 1 : reported.back()) + 1;
    const std::vector<std::string> temporaries = temporary_files(dir);

    warnings.clear();
    const std::optional<io::CheckpointDirectory::Found> found = ckpts.load_latest();
    EXPECT_TRUE(warnings.empty()) << "a process kill left a corrupt checkpoint: "
                                  << warnings.front();
    if (newest_durable == 0) {
      // Nothing was reported yet: at most the first checkpoint completed.
      if (found) expect_checkpoint_of_step(found->checkpoint, found->checkpoint.step, found->path);
      next_start = found ? found->checkpoint.step + 1 : 1;
      files_before = ckpts.steps().size();
      continue;
    }
    ASSERT_TRUE(found.has_value())
        << "no checkpoint after step " << newest_durable << " was reported";
    EXPECT_GE(found->checkpoint.step, newest_durable);
    EXPECT_LE(found->checkpoint.step, newest_possible);
    // The newest file is the one picked: none was skipped as partial.
    const std::vector<int64_t> steps = ckpts.steps();
    ASSERT_FALSE(steps.empty());
    EXPECT_EQ(found->path, ckpts.path_for(steps.back()));
    // A completed write leaves at most keep_last files; a kill between a
    // write's rename and its pruning one more. Without any completed write
    // since the last kill, kills in that window may add one file each.
    const size_t bound = reported.empty() ? files_before + 1 : static_cast<size_t>(kKeepLast) + 1;
    EXPECT_LE(steps.size(), bound) << "old checkpoints were not pruned";
    files_before = steps.size();
    expect_checkpoint_of_step(found->checkpoint, found->checkpoint.step, found->path);
    // Every checkpoint file left is complete, not only the newest.
    for (int64_t s : steps) {
      const std::string path = ckpts.path_for(s);
      if (path == found->path) continue;
      try {
        expect_checkpoint_of_step(io::read_checkpoint(path), s, path);
      } catch (const Error& e) {
        ADD_FAILURE() << "older checkpoint unreadable: " << e.what();
      }
    }
    if (::testing::Test::HasFatalFailure()) return;
    next_start = found->checkpoint.step + 1;  // a resumed run continues after it
    // Stale temporary files do not pile up: they belong to the step the
    // next writer writes again; or, when the kill fell between a write's
    // rename and its clean-up, to the step just completed. Any older one was
    // removed by the first write that completed since (CheckpointDirectory
    // removes every stale checkpoint temporary).
    const std::string next_prefix = "ckpt-" + std::to_string(next_start) + ".dtc.tmp-";
    const std::string found_prefix = "ckpt-" + std::to_string(next_start - 1) + ".dtc.tmp-";
    bool mid_write = false;
    for (const std::string& name : temporaries) {
      if (name.rfind(next_prefix, 0) == 0) mid_write = true;
      if (name.rfind(next_prefix, 0) == 0) continue;
      if (leaked.count(name) != 0 && reported.empty()) continue;  // no write completed since
      if (name.rfind(found_prefix, 0) == 0) {
        leaked.insert(name);
        continue;
      }
      ADD_FAILURE() << name << " left behind; the next write is step " << next_start;
    }
    if (mid_write) ++landed_mid_write;
  }
  std::printf(
      "[          ] %d kills, %d left a temporary file (mid-write), %zu temporary files "
      "left after a rename (removed by the next write), %.0f us per write (%.0f encoding), last "
      "step %lld\n",
      kKills, landed_mid_write, leaked.size(), write_us, encode_us,
      static_cast<long long>(next_start - 1));
  EXPECT_GT(newest_durable, 0);
  // The kills must exercise the write itself, not only the gaps between writes.
  EXPECT_GT(landed_mid_write, 0);
}

// ------------------------------------------------------------ the real binary

using ft_test::kJob;
using ft_test::start_dtrain;
using ft_test::write_text;

using ft_test::wait_for_text;

TEST(CheckpointCrash, KilledDtrainResumesFromItsCheckpoints) {
  testing::TempDir tmp;
  write_text(tmp.file("job.toml"), kJob);
  const std::string out = tmp.file("out");
  const std::vector<std::string> args = {"train", tmp.file("job.toml"), "--output",
                                         out,     "--progress",         "plain"};
  testing::ChildProcess run = start_dtrain(args);
  // Step 25 of 60 (epoch 2): checkpoints are being written every step.
  ASSERT_TRUE(wait_for_text(run, "(global 25)", Deadline::after(120s))) << run.output();
  spin_for(std::chrono::microseconds(Rng(7).below(3000)));
  run.signal(SIGKILL);
  const std::optional<testing::ExitStatus> killed = run.wait(Deadline::after(30s));
  ASSERT_TRUE(killed.has_value());
  ASSERT_FALSE(killed->exited) << "dtrain finished before the kill:\n" << run.output();

  std::vector<std::string> warnings;
  Logger logger(LogLevel::kWarn, [&](LogLevel, std::string_view m) { warnings.emplace_back(m); });
  io::CheckpointDirectory ckpts(out, 2, io::default_file_system(), logger);
  const std::optional<io::CheckpointDirectory::Found> found = ckpts.load_latest();
  ASSERT_TRUE(found.has_value()) << "no checkpoint left by the killed run";
  EXPECT_TRUE(warnings.empty()) << warnings.front();
  EXPECT_GE(found->checkpoint.step, 24);
  EXPECT_EQ(found->path, ckpts.path_for(ckpts.steps().back()));

  testing::ChildProcess again = start_dtrain(args);
  const std::optional<testing::ExitStatus> status = again.wait(Deadline::after(240s));
  ASSERT_TRUE(status.has_value()) << "the resumed run did not finish: " << again.output();
  ASSERT_TRUE(status->ok()) << status->describe() << "\n" << again.output();
  EXPECT_NE(again.output().find("resumed from " + out + "/ckpt-"), std::string::npos)
      << again.output();
  EXPECT_NE(again.output().find("done: 3 epochs, 60 steps"), std::string::npos) << again.output();
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
}

}  // namespace
}  // namespace dtrain
