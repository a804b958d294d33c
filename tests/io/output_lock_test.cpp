// OutputLock (issue #18, item 6): two runs on one output folder. The second
// fails at once naming the first (pid, host, start time); a holder killed with
// SIGKILL leaves a lock the next run takes over, reporting the dead holder.
#include "io/output_lock.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "io/file_system.h"
#include "testing/expect_error.h"
#include "testing/fault_fs.h"
#include "testing/process.h"

namespace dtrain::io {
namespace {

using namespace std::chrono_literals;
using dtrain::testing::TempDir;

struct CapturedLog {
  std::vector<std::string> lines;
  Logger logger{LogLevel::kDebug,
                [this](LogLevel, std::string_view line) { lines.emplace_back(line); }};
};

std::chrono::system_clock::time_point may_first_noon() {
  using namespace std::chrono;
  return sys_days{year{2024} / May / 1} + 12h;
}

LockRecord record_of(int64_t pid, const std::string& command) {
  return LockRecord{pid, "node7", "2024-05-01T12:00:00Z", command};
}

std::string file_text(const std::string& path) {
  return default_file_system().read_file(path, kUnlimitedBytes);
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);  // test harness only
  return v ? v : fallback;
}

TEST(OutputLockRecord, RoundTripsAndRefusesWhatIsNotARecord) {
  const LockRecord record = record_of(4242, "dtrain train job.toml --workers 4");
  const std::string text = encode_lock_record(record);
  EXPECT_EQ(text,
            "pid=4242\nhost=node7\nstarted=2024-05-01T12:00:00Z\ncommand=dtrain train job.toml "
            "--workers 4\n");
  EXPECT_EQ(decode_lock_record(text), record);
  // A newline in a value cannot break the format.
  const LockRecord odd = record_of(7, "dtrain train 'a\nb.toml'");
  EXPECT_EQ(decode_lock_record(encode_lock_record(odd))->command_line, "dtrain train 'a b.toml'");
  // Keys of a newer version are ignored; the four known ones are required.
  EXPECT_EQ(decode_lock_record(text + "gpu=0\n"), record);
  EXPECT_FALSE(decode_lock_record(""));
  EXPECT_FALSE(decode_lock_record("pid=4242\nhost=node7\n"));
  EXPECT_FALSE(decode_lock_record("garbage"));
  EXPECT_FALSE(decode_lock_record("pid=0\nhost=h\nstarted=s\ncommand=c\n"));
  EXPECT_FALSE(decode_lock_record("pid=12x\nhost=h\nstarted=s\ncommand=c\n"));
}

TEST(OutputLockRecord, ThisProcessInUtcIso8601) {
  EXPECT_EQ(format_utc(may_first_noon() + 1500ms), "2024-05-01T12:00:01Z");
  const LockRecord me = this_process_record("dtrain train x.toml", may_first_noon());
  EXPECT_EQ(me.pid, ::getpid());
  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(me.host, host);
  EXPECT_EQ(me.started, "2024-05-01T12:00:00Z");
  EXPECT_EQ(me.command_line, "dtrain train x.toml");
}

TEST(OutputLock, CreatesTheFolderWritesTheRecordAndEmptiesItOnRelease) {
  TempDir tmp;
  CapturedLog log;
  const std::string dir = tmp.file("runs/a");
  const LockRecord me = record_of(::getpid(), "dtrain train job.toml");
  {
    OutputLock lock = OutputLock::acquire(dir, me, log.logger);
    EXPECT_TRUE(lock.held());
    EXPECT_EQ(lock.path(), dir + "/.dtrain.lock");
    EXPECT_EQ(decode_lock_record(file_text(lock.path())), me);

    OutputLock moved = std::move(lock);
    EXPECT_FALSE(lock.held());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_TRUE(moved.held());
  }
  EXPECT_EQ(file_text(dir + "/.dtrain.lock"), "");  // released cleanly: nothing to report
  OutputLock again = OutputLock::acquire(dir, me, log.logger);
  EXPECT_TRUE(log.lines.empty());
  again.release();
  EXPECT_FALSE(again.held());
  again.release();  // a no-op
}

TEST(OutputLock, AFolderThatCannotBeCreatedIsAClearError) {
  TempDir tmp;
  CapturedLog log;
  default_file_system().write_file(tmp.file("plain"), "x");
  dtrain::testing::expect_usage_error(
      [&] { OutputLock::acquire(tmp.file("plain"), record_of(1, "c"), log.logger); },
      "cannot create the output folder '" + tmp.file("plain") + "': exists and is not a directory");
  dtrain::testing::expect_usage_error(
      [&] { OutputLock::acquire(tmp.file("plain/sub/out"), record_of(1, "c"), log.logger); },
      "cannot create the output folder '" + tmp.file("plain/sub/out") +
          "': Not a directory (creating '" + tmp.file("plain/sub") + "')");
}

// ------------------------------------------------------------ child side

// Tries to lock DTRAIN_TEST_DIR and prints the outcome on one line.
TEST(OutputLockChild, DISABLED_TryAcquire) {
  const std::string dir = env_or("DTRAIN_TEST_DIR", "");
  ASSERT_FALSE(dir.empty());
  try {
    OutputLock lock = OutputLock::acquire(
        dir, this_process_record("child", std::chrono::system_clock::now()), Logger::null());
    std::printf("acquired\n");
  } catch (const UsageError& e) {
    std::printf("refused: %s\n", e.what());
  }
  std::fflush(stdout);
}

// Locks DTRAIN_TEST_DIR, prints "locked" and waits to be killed (for at most
// a minute, so that a forgotten child ends by itself).
TEST(OutputLockChild, DISABLED_Hold) {
  const std::string dir = env_or("DTRAIN_TEST_DIR", "");
  ASSERT_FALSE(dir.empty());
  OutputLock lock = OutputLock::acquire(
      dir, this_process_record("dtrain train holder.toml", may_first_noon()), Logger::null());
  std::printf("locked\n");
  std::fflush(stdout);
  for (int i = 0; i < 600; ++i) std::this_thread::sleep_for(100ms);  // waiting for SIGKILL
}

// ------------------------------------------------------------ parent side

TEST(OutputLock, ASecondRunInAnotherProcessIsRefusedNamingTheFirst) {
  TempDir tmp;
  CapturedLog log;
  const std::string dir = tmp.file("out");
  OutputLock lock = OutputLock::acquire(
      dir, this_process_record("dtrain train first.toml", may_first_noon()), log.logger);
  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof(host) - 1), 0);

  auto child = dtrain::testing::spawn_test_child("OutputLockChild.DISABLED_TryAcquire",
                                                 {{"DTRAIN_TEST_DIR", dir}});
  const auto status = child.wait(Deadline::after(60s));
  ASSERT_TRUE(status.has_value()) << child.output();
  EXPECT_TRUE(status->ok()) << status->describe() << child.output();
  const std::string expected = fmt::format(
      "refused: output folder '{}' is in use by another dtrain run: pid {} on host {}, started "
      "2024-05-01T12:00:00Z, command 'dtrain train first.toml'; wait for it to finish or pass "
      "another --output\n",
      dir, ::getpid(), host);
  EXPECT_NE(child.output().find(expected), std::string::npos) << child.output();

  // Released: the next process gets it.
  lock.release();
  auto next = dtrain::testing::spawn_test_child("OutputLockChild.DISABLED_TryAcquire",
                                                {{"DTRAIN_TEST_DIR", dir}});
  ASSERT_TRUE(next.wait(Deadline::after(60s)).has_value());
  EXPECT_NE(next.output().find("acquired\n"), std::string::npos) << next.output();
}

// acquire_waiting: a lock released while it waits is taken; one held past
// the wait is a UsageError naming the holder and the time waited.
TEST(OutputLock, WaitingTakesTheLockOnceItsHolderReleasesIt) {
  TempDir tmp;
  CapturedLog log;
  const std::string dir = tmp.file("out");
  OutputLock first = OutputLock::acquire(dir, record_of(::getpid(), "first"), log.logger);
  std::thread releaser([&first] {
    std::this_thread::sleep_for(300ms);
    first.release();
  });
  OutputLock second =
      OutputLock::acquire_waiting(dir, record_of(::getpid(), "second"), log.logger, 10min);
  releaser.join();
  EXPECT_TRUE(second.held());
  EXPECT_EQ(decode_lock_record(file_text(second.path())), record_of(::getpid(), "second"));
}

TEST(OutputLock, WaitingPastTheBoundNamesTheHolder) {
  TempDir tmp;
  CapturedLog log;
  const std::string dir = tmp.file("out");
  const OutputLock first =
      OutputLock::acquire(dir, record_of(4242, "dtrain train a.toml"), log.logger);
  dtrain::testing::expect_usage_error(
      [&] { OutputLock::acquire_waiting(dir, record_of(1, "b"), log.logger, 300ms); },
      fmt::format("output folder '{}' is still in use by another dtrain run after waiting 300 ms: "
                  "pid 4242 on host node7, started 2024-05-01T12:00:00Z, command 'dtrain train "
                  "a.toml'; a process that holds it frozen (SIGSTOP, a hung host) keeps it until "
                  "it runs again or is killed",
                  dir));
}

TEST(OutputLock, AKilledHoldersLockIsTakenOverAndItsRecordReported) {
  TempDir tmp;
  CapturedLog log;
  const std::string dir = tmp.file("out");
  auto holder = dtrain::testing::spawn_test_child("OutputLockChild.DISABLED_Hold",
                                                  {{"DTRAIN_TEST_DIR", dir}});
  ASSERT_TRUE(holder.wait_for_line("locked", Deadline::after(60s))) << holder.output();
  const LockRecord me = this_process_record("dtrain train second.toml", may_first_noon());
  try {
    OutputLock::acquire(dir, me, log.logger);
    FAIL() << "acquired a held lock";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format(
                  "is in use by another dtrain run: pid {} on host {}", holder.pid(), me.host)),
              std::string::npos)
        << e.what();
  }

  holder.signal(SIGKILL);
  const auto status = holder.wait(Deadline::after(60s));
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->signal, SIGKILL);
  OutputLock lock = OutputLock::acquire(dir, me, log.logger);
  EXPECT_TRUE(lock.held());
  EXPECT_EQ(decode_lock_record(file_text(lock.path())), me);
  ASSERT_EQ(log.lines.size(), 1u);
  EXPECT_EQ(log.lines[0],
            fmt::format("output folder '{}': the run that held it (pid {} on host {}, started "
                        "2024-05-01T12:00:00Z, command 'dtrain train holder.toml') is no longer "
                        "running and did not release it (killed or crashed); taking the folder "
                        "over",
                        dir, holder.pid(), me.host));
}

// O_CLOEXEC: the processes a run spawns (its workers) do not inherit the
// lock file, so a killed run's lock does not live on in its children.
TEST(OutputLock, SpawnedProcessesDoNotInheritTheLockFile) {
  TempDir tmp;
  OutputLock lock =
      OutputLock::acquire(tmp.file("out"), record_of(::getpid(), "parent"), Logger::null());
  auto child = dtrain::testing::spawn_test_child("OutputLockChild.DISABLED_Hold",
                                                 {{"DTRAIN_TEST_DIR", tmp.file("other")}});
  ASSERT_TRUE(child.wait_for_line("locked", Deadline::after(60s))) << child.output();
  const std::string fds = fmt::format("/proc/{}/fd", child.pid());
  int lock_files = 0;
  for (const std::string& name : default_file_system().list_directory(fds)) {
    char target[4096] = {};
    const ssize_t n = ::readlink((fds + "/" + name).c_str(), target, sizeof(target) - 1);
    if (n > 0 && std::string(target, static_cast<size_t>(n)) == lock.path()) ++lock_files;
  }
  EXPECT_EQ(lock_files, 0);
  child.signal(SIGKILL);
  ASSERT_TRUE(child.wait(Deadline::after(60s)).has_value());
}

}  // namespace
}  // namespace dtrain::io
