// Launcher with /bin/sh workers: environment, output streaming, failure
// propagation, signal forwarding and cleanup. Workers that must reach a point
// before the test goes on (a trap installed, a launcher run active) say so
// through FIFOs, never through sleeps.
#include "cli/launcher.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "testing/fault_fs.h"

namespace dtrain::cli {
namespace {

using namespace std::chrono_literals;

// Far beyond anything these tests need; only a broken launcher reaches it.
constexpr auto kRunDeadline = 60s;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool contains_line(const std::vector<std::string>& lines, const std::string& needle) {
  return std::any_of(lines.begin(), lines.end(),
                     [&](const std::string& l) { return l.find(needle) != std::string::npos; });
}

// True while `pid` exists and is not a zombie.
bool is_running(pid_t pid) {
  if (kill(pid, 0) != 0) return errno != ESRCH;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = content.rfind(')');
  return paren == std::string::npos || paren + 2 >= content.size() || content[paren + 2] != 'Z';
}

// A temporary folder for FIFOs, removed with its contents.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string templ =
        (std::filesystem::temp_directory_path() / "dtrain-launcher-XXXXXX").string();
    if (mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = templ;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string fifo(const std::string& name) const {
    const std::string p = (path / name).string();
    if (mkfifo(p.c_str(), 0600) != 0) throw std::runtime_error("mkfifo failed: " + p);
    return p;
  }
};

// One launcher run of `sh -c script` with its output and log captured.
struct ShJob {
  LaunchOptions options;
  std::ostringstream out;
  std::ostringstream err;
  std::vector<std::string> log;
  Logger logger{LogLevel::kDebug, [this](LogLevel level, std::string_view message) {
                  log.push_back(fmt::format("[{}] {}", to_string(level), message));
                }};

  ShJob(const std::string& script, int workers) {
    options.argv = {"/bin/sh", "-c", script};
    options.workers = workers;
    options.environment = {{"PATH", "/usr/bin:/bin"}};
  }
  LaunchResult launch(Deadline deadline = Deadline::after(kRunDeadline)) {
    Launcher launcher(options, out, err, logger);
    return launcher.run(deadline);
  }
  std::string log_text() const {
    std::string text;
    for (const auto& l : log) text += l + "\n";
    return text;
  }
};

void expect_all_gone(const LaunchResult& result) {
  for (const WorkerExit& w : result.workers) {
    EXPECT_FALSE(is_running(w.pid)) << "worker rank " << w.rank << " pid " << w.pid;
  }
}

TEST(Launcher, EnvironmentReachesEveryWorker) {
  ShJob run(
      "echo \"$DTRAIN_RANK $DTRAIN_WORLD_SIZE $DTRAIN_LOCAL_RANK $DTRAIN_COORDINATOR "
      "$DTRAIN_JOB_SECRET $EXTRA\"",
      3);
  run.options.environment["EXTRA"] = "extra-value";
  run.options.environment["DTRAIN_RANK"] = "7";  // stale: replaced per worker
  const LaunchResult result = run.launch();

  EXPECT_EQ(result.exit_code, 0) << run.log_text();
  ASSERT_EQ(result.workers.size(), 3u);
  for (const WorkerExit& w : result.workers) EXPECT_TRUE(w.ok()) << w.describe();
  ASSERT_EQ(result.coordinator.rfind("127.0.0.1:", 0), 0u) << result.coordinator;
  const int port = std::stoi(result.coordinator.substr(10));
  EXPECT_GT(port, 0);
  EXPECT_LE(port, 65535);

  std::vector<std::string> lines = lines_of(run.out.str());
  ASSERT_EQ(lines.size(), 3u) << run.out.str();
  std::sort(lines.begin(), lines.end());
  std::string secret;
  for (int r = 0; r < 3; ++r) {
    const std::string prefix = fmt::format("[rank {}] {} 3 {} {} ", r, r, r, result.coordinator);
    ASSERT_EQ(lines[r].rfind(prefix, 0), 0u) << lines[r];
    std::istringstream rest(lines[r].substr(prefix.size()));
    std::string this_secret, extra;
    rest >> this_secret >> extra;
    EXPECT_EQ(this_secret.size(), 64u);
    EXPECT_EQ(this_secret.find_first_not_of("0123456789abcdef"), std::string::npos);
    if (r == 0) secret = this_secret;
    EXPECT_EQ(this_secret, secret) << "every worker of one job has the same secret";
    EXPECT_EQ(extra, "extra-value");
  }
  expect_all_gone(result);

  ShJob again("echo $DTRAIN_JOB_SECRET", 1);
  again.launch();
  EXPECT_NE(again.out.str(), "[rank 0] " + secret + "\n") << "each job gets a fresh secret";
}

TEST(Launcher, PlacesItsWorkersInALargerWorldAtAGivenCoordinator) {
  ShJob run("echo \"$DTRAIN_RANK $DTRAIN_WORLD_SIZE $DTRAIN_LOCAL_RANK $DTRAIN_COORDINATOR\"", 2);
  run.options.first_rank = 4;
  run.options.world_size = 6;
  run.options.coordinator_port = 4242;
  const LaunchResult result = run.launch();
  EXPECT_EQ(result.exit_code, 0) << run.log_text();
  std::vector<std::string> lines = lines_of(run.out.str());
  std::sort(lines.begin(), lines.end());
  const std::vector<std::string> expected = {"[rank 0] 4 6 0 127.0.0.1:4242",
                                             "[rank 1] 5 6 1 127.0.0.1:4242"};
  EXPECT_EQ(lines, expected) << run.out.str();

  ShJob outside("exit 0", 2);
  outside.options.first_rank = 5;
  outside.options.world_size = 6;
  EXPECT_THROW(outside.launch(), UsageError);
}

TEST(Launcher, KeepsAJobSecretFromTheEnvironment) {
  ShJob run("echo $DTRAIN_JOB_SECRET", 2);
  run.options.environment["DTRAIN_JOB_SECRET"] = "chosen-by-user";
  const LaunchResult result = run.launch();
  EXPECT_EQ(result.exit_code, 0);
  std::vector<std::string> lines = lines_of(run.out.str());
  std::sort(lines.begin(), lines.end());
  EXPECT_EQ(lines,
            (std::vector<std::string>{"[rank 0] chosen-by-user", "[rank 1] chosen-by-user"}));
}

// With a key file the launcher's workers get its path, never the secret
// (docs/security.md): what each worker's environment holds, as the worker
// itself prints it.
TEST(Launcher, WithAKeyFileTheWorkersGetItsPathAndNoSecret) {
  ShJob run("echo \"${DTRAIN_JOB_SECRET:-no-secret} $DTRAIN_KEY_FILE\"", 2);
  provide_job_secret(run.options.environment, "/keys/job.key");
  EXPECT_EQ(run.options.environment.count("DTRAIN_JOB_SECRET"), 0u);
  // A secret the launcher's own environment held is not passed on either
  // (Launcher::run applies the same rule).
  run.options.environment["DTRAIN_JOB_SECRET"] = "held-by-the-launcher";
  const LaunchResult result = run.launch();
  EXPECT_EQ(result.exit_code, 0) << run.log_text();
  std::vector<std::string> lines = lines_of(run.out.str());
  std::sort(lines.begin(), lines.end());
  EXPECT_EQ(lines, (std::vector<std::string>{"[rank 0] no-secret /keys/job.key",
                                             "[rank 1] no-secret /keys/job.key"}));
}

TEST(Launcher, StreamsWholeLinesWithRankPrefixes) {
  // Each worker writes 200 lines of 3000 copies of its rank digit to stdout
  // and to stderr at the same time as the others, then a last line without
  // '\n'. A line arriving in pieces must still come out whole.
  constexpr int kWorkers = 4;
  constexpr int kLines = 200;
  constexpr size_t kWidth = 3000;
  ShJob run(
      fmt::format("line=$(printf '%0{}d' 0 | tr 0 $DTRAIN_RANK); i=0; "
                  "while [ $i -lt {} ]; do echo \"$line\"; echo \"$line\" >&2; i=$((i+1)); done; "
                  "printf 'last words of %s' $DTRAIN_RANK",
                  kWidth, kLines),
      kWorkers);
  const LaunchResult result = run.launch();
  ASSERT_EQ(result.exit_code, 0) << run.log_text();

  const std::string out = run.out.str();
  const std::string err = run.err.str();
  for (const std::string* text : {&out, &err}) {
    std::map<int, int> full_lines;
    std::map<int, int> last_lines;
    for (const std::string& line : lines_of(*text)) {
      ASSERT_EQ(line.rfind("[rank ", 0), 0u) << line.substr(0, 40);
      const int rank = line[6] - '0';
      ASSERT_GE(rank, 0);
      ASSERT_LT(rank, kWorkers);
      const std::string prefix = fmt::format("[rank {}] ", rank);
      const std::string body = line.substr(prefix.size());
      if (body == fmt::format("last words of {}", rank)) {
        ++last_lines[rank];
      } else {
        ASSERT_EQ(body, std::string(kWidth, static_cast<char>('0' + rank)))
            << "a line mixed with another or cut: " << line.substr(0, 60) << "...";
        ++full_lines[rank];
      }
    }
    // The last line was written to stdout only.
    const bool is_out = text == &out;
    for (int r = 0; r < kWorkers; ++r) {
      EXPECT_EQ(full_lines[r], kLines) << "rank " << r;
      EXPECT_EQ(last_lines[r], is_out ? 1 : 0) << "rank " << r;
    }
  }
}

TEST(Launcher, SplitsLinesLongerThan64KiB) {
  ShJob run("printf '%0100000d\\n' 0", 1);
  const LaunchResult result = run.launch();
  ASSERT_EQ(result.exit_code, 0) << run.log_text();
  const std::vector<std::string> lines = lines_of(run.out.str());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "[rank 0] " + std::string(65536, '0'));
  EXPECT_EQ(lines[1], "[rank 0] " + std::string(100000 - 65536, '0'));
}

TEST(Launcher, FailingWorkerStopsTheOthersAndSetsTheExitCode) {
  ShJob run(
      "echo started; if [ $DTRAIN_RANK = 2 ]; then echo failing >&2; exit 3; fi; exec sleep 30", 4);
  run.options.stop_grace = 30s;  // sleep ends on SIGTERM; SIGKILL must not be needed
  const LaunchResult result = run.launch();

  EXPECT_EQ(result.exit_code, 3);
  ASSERT_EQ(result.first_failed_rank, 2);
  EXPECT_EQ(result.interrupted_by, 0);
  ASSERT_EQ(result.workers.size(), 4u);
  EXPECT_TRUE(result.workers[2].exited);
  EXPECT_EQ(result.workers[2].code, 3);
  for (int r : {0, 1, 3}) {
    EXPECT_FALSE(result.workers[r].exited) << result.workers[r].describe();
    EXPECT_EQ(result.workers[r].signal, SIGTERM) << result.workers[r].describe();
  }
  const std::vector<std::string> log = run.log;
  EXPECT_TRUE(contains_line(
      log, fmt::format("[error] worker rank 2 (pid {}) exited with code 3", result.workers[2].pid)))
      << run.log_text();
  EXPECT_TRUE(contains_line(lines_of(run.err.str()), "[rank 2] failing"));
  EXPECT_FALSE(contains_line(log, "sending SIGKILL")) << run.log_text();
  expect_all_gone(result);
}

TEST(Launcher, WorkerKilledBySignalIsReportedByName) {
  ShJob run("if [ $DTRAIN_RANK = 1 ]; then kill -KILL $$; fi; exec sleep 30", 3);
  const LaunchResult result = run.launch();

  EXPECT_EQ(result.exit_code, 1);
  ASSERT_EQ(result.first_failed_rank, 1);
  EXPECT_EQ(result.workers[1].signal, SIGKILL);
  EXPECT_TRUE(contains_line(run.log, fmt::format("worker rank 1 (pid {}) was killed by signal 9 "
                                                 "(SIGKILL)",
                                                 result.workers[1].pid)))
      << run.log_text();
  expect_all_gone(result);
}

TEST(Launcher, WorkersIgnoringSigtermAreKilledAfterTheGrace) {
  // Ranks 1 and 2 ignore SIGTERM and then report through their FIFO; rank 0
  // fails only once both did, so the trap is surely in place.
  TempDir dir;
  const std::string ready1 = dir.fifo("ready.1");
  const std::string ready2 = dir.fifo("ready.2");
  ShJob run(fmt::format("if [ $DTRAIN_RANK = 0 ]; then read x < {}; read x < {}; exit 5; fi; "
                        "trap '' TERM; echo ready > {}/ready.$DTRAIN_RANK; exec sleep 30",
                        ready1, ready2, dir.path.string()),
            3);
  run.options.stop_grace = 200ms;
  const LaunchResult result = run.launch();

  EXPECT_EQ(result.exit_code, 5);
  EXPECT_EQ(result.first_failed_rank, 0);
  for (int r : {1, 2}) {
    EXPECT_EQ(result.workers[r].signal, SIGKILL) << result.workers[r].describe();
  }
  EXPECT_TRUE(contains_line(run.log,
                            "still running 200 ms after being asked to stop; sending "
                            "SIGKILL"))
      << run.log_text();
  expect_all_gone(result);
}

// Blocks until `pid` (a child of this process) ends, for at most 30 s.
std::optional<int> wait_child(pid_t pid) {
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return std::nullopt;
  pollfd p{pidfd, POLLIN, 0};
  const int ready = poll(&p, 1, 30000);
  close(pidfd);
  int raw = 0;
  if (ready != 1 || waitpid(pid, &raw, 0) != pid) return std::nullopt;
  return raw;
}

// Makes this process adopt orphaned descendants while it lives.
struct SubreaperScope {
  SubreaperScope() { EXPECT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0); }
  ~SubreaperScope() { prctl(PR_SET_CHILD_SUBREAPER, 0); }
};

TEST(Launcher, WhatAWorkerLeftRunningIsKilled) {
  // The worker's background child is adopted by this process, so the test can
  // see how it ended.
  SubreaperScope subreaper;
  ShJob run("sleep 30 & echo child $!; exit 0", 1);
  const LaunchResult result = run.launch();

  EXPECT_EQ(result.exit_code, 0) << run.log_text();
  const std::vector<std::string> lines = lines_of(run.out.str());
  ASSERT_EQ(lines.size(), 1u);
  ASSERT_EQ(lines[0].rfind("[rank 0] child ", 0), 0u) << lines[0];
  const pid_t child = std::stoi(lines[0].substr(15));
  const std::optional<int> raw = wait_child(child);
  ASSERT_TRUE(raw.has_value()) << "the worker's child " << child << " outlived the launcher";
  EXPECT_TRUE(WIFSIGNALED(*raw));
  EXPECT_EQ(WTERMSIG(*raw), SIGKILL);
}

void record_signal(int) {}

class LauncherSignal : public ::testing::TestWithParam<int> {};

TEST_P(LauncherSignal, IsForwardedToTheWorkersAndTheHandlerRestored) {
  const int sig = GetParam();
  struct sigaction mine {};
  mine.sa_handler = record_signal;
  sigemptyset(&mine.sa_mask);
  struct sigaction before {};
  ASSERT_EQ(sigaction(sig, &mine, &before), 0);

  // Rank 0 signals the launcher (its parent) once it runs.
  ShJob run(fmt::format("if [ $DTRAIN_RANK = 0 ]; then kill -{} $PPID; fi; exec sleep 30",
                        sig == SIGINT ? "INT" : "TERM"),
            2);
  const LaunchResult result = run.launch();

  struct sigaction after {};
  ASSERT_EQ(sigaction(sig, &before, &after), 0);
  EXPECT_EQ(after.sa_handler, &record_signal) << "the launcher must restore the caller's handler";

  EXPECT_EQ(result.interrupted_by, sig);
  EXPECT_EQ(result.exit_code, 128 + sig);
  EXPECT_FALSE(result.first_failed_rank.has_value());
  for (const WorkerExit& w : result.workers) EXPECT_EQ(w.signal, sig) << w.describe();
  EXPECT_TRUE(contains_line(run.log, fmt::format("launcher received SIG{}", sigabbrev_np(sig))))
      << run.log_text();
  expect_all_gone(result);
}

INSTANTIATE_TEST_SUITE_P(IntAndTerm, LauncherSignal, ::testing::Values(SIGINT, SIGTERM),
                         [](const auto& info) { return std::string(sigabbrev_np(info.param)); });

TEST(Launcher, DeadlineStopsTheWorkersAndThrows) {
  ShJob run("exec sleep 30", 2);
  run.options.stop_grace = 10s;
  EXPECT_THROW(run.launch(Deadline::after(300ms)), TimeoutError);
  // The pids, from the launcher's "started 2 worker(s), ...: rank 0 (pid N), 1 (pid M)".
  ASSERT_FALSE(run.log.empty());
  const std::string& started = run.log.front();
  ASSERT_EQ(started.rfind("[info] started 2 worker(s), coordinator ", 0), 0u) << started;
  std::vector<pid_t> pids;
  for (size_t at = started.find("(pid "); at != std::string::npos;
       at = started.find("(pid ", at + 1)) {
    pids.push_back(std::stoi(started.substr(at + 5)));
  }
  ASSERT_EQ(pids.size(), 2u) << started;
  for (pid_t pid : pids) EXPECT_FALSE(is_running(pid)) << pid;
  EXPECT_TRUE(contains_line(run.log, "launch deadline passed")) << run.log_text();
}

TEST(Launcher, ProgramThatCannotStartIsAnError) {
  ShJob run("", 2);
  run.options.argv = {"/nonexistent/dtrain-worker"};
  try {
    run.launch();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "launcher: cannot start worker rank 0: '/nonexistent/dtrain-worker': No such file "
                 "or directory");
  }
  struct sigaction now {};
  ASSERT_EQ(sigaction(SIGTERM, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_DFL) << "handlers are restored on the error path too";
}

TEST(Launcher, OnlyOneRunAtATime) {
  // The first run's worker proves the run is active by opening `active`,
  // then waits on `release` until the second run was refused.
  TempDir dir;
  const std::string active = dir.fifo("active");
  const std::string release = dir.fifo("release");
  ShJob first(fmt::format("echo x > {}; read x < {}", active, release), 1);
  std::string second_error;
  std::jthread second([&] {
    {
      std::ifstream wait_active(active);
      std::string line;
      std::getline(wait_active, line);
    }
    ShJob run("true", 1);
    try {
      run.launch();
      second_error = "no error";
    } catch (const std::exception& e) {
      second_error = e.what();
    }
    std::ofstream(release) << "go\n";
  });
  const LaunchResult result = first.launch();
  second.join();
  EXPECT_EQ(result.exit_code, 0) << first.log_text();
  EXPECT_EQ(second_error,
            "launcher: another Launcher::run() is active in this process; only one may catch "
            "SIGINT/SIGTERM at a time");
}

TEST(Launcher, RejectsBadOptions) {
  std::ostringstream sink;
  auto error_of = [&](const LaunchOptions& options) -> std::string {
    try {
      Launcher launcher(options, sink, sink, Logger::null());
    } catch (const UsageError& e) {
      return e.what();
    }
    return "no error";
  };
  LaunchOptions ok;
  ok.argv = {"/bin/true"};
  EXPECT_EQ(error_of(ok), "no error");
  LaunchOptions no_argv = ok;
  no_argv.argv.clear();
  EXPECT_EQ(error_of(no_argv),
            "launcher: the worker command line is empty (argv[0] must be a path)");
  LaunchOptions no_workers = ok;
  no_workers.workers = 0;
  EXPECT_EQ(error_of(no_workers), "launcher: workers is 0; it must be at least 1");
  LaunchOptions bad_port = ok;
  bad_port.coordinator_port = 70000;
  EXPECT_EQ(error_of(bad_port), "launcher: coordinator port 70000 is outside 0..65535");
  LaunchOptions bad_grace = ok;
  bad_grace.stop_grace = -1ms;
  EXPECT_EQ(error_of(bad_grace),
            "launcher: stop_grace (-1 ms) and output_drain_timeout (2000 ms) must not be negative");
  LaunchOptions bad_slots = ok;
  bad_slots.workers = 3;
  bad_slots.elastic.emplace();
  bad_slots.elastic->essential_slots = 1;
  bad_slots.elastic->first_worker_slot = 2;  // past the essential slots
  EXPECT_EQ(error_of(bad_slots),
            "launcher: elastic essential_slots 1 must be in 0..3, first_worker_slot 2 in 0..1, "
            "min_workers 1 in 1..1 (the workers) and max_restarts 0 must not be negative");
}

// Elastic mode with an essential slot 0 (a ps job's server) and worker slots
// 1 and 2, as cli/ps_launch.cpp sets it up.
LaunchOptions::Elastic server_and_workers(int min_workers, int max_restarts) {
  LaunchOptions::Elastic e;
  e.essential_slots = 1;
  e.first_worker_slot = 1;
  e.min_workers = min_workers;
  e.max_restarts = max_restarts;
  e.slot_name = [](int slot) {
    return slot == 0 ? std::string("server") : fmt::format("worker {}", slot - 1);
  };
  return e;
}

TEST(Launcher, AnEssentialSlotLostWithNoRestartLeftStopsTheJobNamingIt) {
  ShJob run("if [ $DTRAIN_RANK = 0 ]; then exit 3; fi; exec sleep 30", 3);
  run.options.elastic = server_and_workers(1, 0);
  const LaunchResult result = run.launch();
  EXPECT_EQ(result.exit_code, 3);
  ASSERT_EQ(result.first_failed_rank, 0);
  EXPECT_TRUE(contains_line(run.log, fmt::format("server (pid {}) exited with code 3; the job "
                                                 "cannot go on without it and no restart is left "
                                                 "(max_restarts = 0): stopping the job",
                                                 result.workers[0].pid)))
      << run.log_text();
  for (int r : {1, 2}) EXPECT_EQ(result.workers[r].signal, SIGTERM) << r;
  expect_all_gone(result);
}

TEST(Launcher, AnEssentialSlotIsStartedAgainWhileRestartsRemain) {
  // The first server fails; its replacement (DTRAIN_RESTART_COUNT 1) and the
  // workers succeed.
  ShJob run("if [ $DTRAIN_RANK = 0 ] && [ $DTRAIN_RESTART_COUNT = 0 ]; then exit 3; fi; exit 0", 3);
  run.options.elastic = server_and_workers(2, 1);
  const LaunchResult result = run.launch();
  EXPECT_EQ(result.exit_code, 0) << run.log_text();
  ASSERT_EQ(result.workers.size(), 4u);
  EXPECT_EQ(result.workers[3].rank, 0);
  EXPECT_TRUE(result.workers[3].ok());
  EXPECT_TRUE(contains_line(run.log,
                            "exited with code 3; starting its replacement (restart 1 of "
                            "1)"))
      << run.log_text();
  EXPECT_TRUE(contains_line(run.log, "started server again (pid ")) << run.log_text();
}

TEST(Launcher, MinWorkersCountsOnlyTheWorkerSlots) {
  // Worker 1 (slot 2) fails: one worker and the server still run, fewer
  // workers than min_workers = 2.
  ShJob run("if [ $DTRAIN_RANK = 2 ]; then exit 4; fi; exec sleep 30", 3);
  run.options.elastic = server_and_workers(2, 0);
  const LaunchResult result = run.launch();
  EXPECT_EQ(result.exit_code, 4);
  EXPECT_TRUE(contains_line(run.log,
                            "exited with code 4; 1 worker(s) left, fewer than "
                            "min_workers = 2: stopping the job (lost: worker 1 "
                            "(pid "))
      << run.log_text();
  expect_all_gone(result);
}

TEST(Launcher, CurrentEnvironmentAndSelfExecutable) {
  ASSERT_EQ(setenv("DTRAIN_LAUNCHER_TEST", "a=b", 1), 0);
  const auto env = current_environment();
  unsetenv("DTRAIN_LAUNCHER_TEST");
  ASSERT_TRUE(env.contains("DTRAIN_LAUNCHER_TEST"));
  EXPECT_EQ(env.at("DTRAIN_LAUNCHER_TEST"), "a=b");
  EXPECT_TRUE(std::filesystem::equivalent(self_executable(), "/proc/self/exe"));
}

}  // namespace
TEST(FailureReport, RoundTripsAndIgnoresWhatIsNotAReport) {
  dtrain::testing::TempDir tmp;
  const std::string dir = tmp.path();
  EXPECT_EQ(read_failure_report(dir, 2), std::nullopt);
  write_failure_report(dir, 2, {1, "allreduce #8 with rank 1: peer stopped responding\n(detail)"});
  const std::optional<FailureReport> report = read_failure_report(dir, 2);
  ASSERT_TRUE(report.has_value());
  EXPECT_EQ(report->culprit, 1);
  EXPECT_EQ(report->message, "allreduce #8 with rank 1: peer stopped responding (detail)");
  std::ofstream(tmp.file("failure-3")) << "rank one\nwhatever\n";
  EXPECT_EQ(read_failure_report(dir, 3), std::nullopt);
  // A folder that cannot be written loses the report and does not throw.
  write_failure_report("/nonexistent/dtrain", 0, {1, "lost"});
}

}  // namespace dtrain::cli
