// ProcessLog under the Launcher in elastic mode with /bin/sh workers: a
// killed worker's exit carries its signal, its replacement is a "restart",
// every event has a time; generations and the job's end are recorded as
// given.
#include "cli/process_log.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "testing/fault_fs.h"

namespace dtrain::cli {
namespace {

using namespace std::chrono_literals;

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST(ProcessLog, RecordsStartsKillsRestartsAndTheEnd) {
  testing::TempDir tmp;
  std::string log_text;
  Logger logger{LogLevel::kDebug, [&](LogLevel, std::string_view message) {
                  log_text += std::string(message) + "\n";
                }};
  ProcessLog processes(tmp.file("processes.jsonl"), 1, logger);
  LaunchOptions options;
  options.argv = {"/bin/sh", "-c",
                  "if [ $DTRAIN_RANK = 1 ] && [ $DTRAIN_RESTART_COUNT = 0 ]; then kill -KILL $$; "
                  "fi; exit 0"};
  options.workers = 3;
  options.environment = {{"PATH", "/usr/bin:/bin"}};
  LaunchOptions::Elastic e;
  e.min_workers = 1;
  e.max_restarts = 1;
  options.elastic = std::move(e);
  int started_before = 0;
  options.on_process_started = [&](int, pid_t) { ++started_before; };  // kept by attach()
  processes.attach(options);
  std::ostringstream out, err;
  const LaunchResult result = Launcher(options, out, err, logger).run(Deadline::after(60s));
  processes.reformed(2, {0, 2});
  processes.job_end(result.exit_code);
  EXPECT_EQ(started_before, 4);

  const auto events = read_lines(tmp.file("processes.jsonl"));
  ASSERT_EQ(events.size(), 10u) << log_text;
  std::vector<std::string> kinds;
  for (const auto& ev : events) {
    EXPECT_GT(ev["time"].get<double>(), 1.6e9);
    kinds.push_back(ev["event"].get<std::string>());
    if (ev["event"] == "start" || ev["event"] == "restart" || ev["event"] == "exit") {
      EXPECT_EQ(ev["role"], ev["slot"] == 0 ? "server" : "worker") << ev.dump();
      EXPECT_GT(ev["pid"].get<int>(), 0);
    }
  }
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), "start"), 3);
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), "restart"), 1);
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), "exit"), 4);
  const auto killed = std::find_if(events.begin(), events.end(), [](const auto& ev) {
    return ev["event"] == "exit" && ev.contains("signal");
  });
  ASSERT_NE(killed, events.end());
  EXPECT_EQ((*killed)["slot"], 1);
  EXPECT_EQ((*killed)["signal"], SIGKILL);
  const auto restart = std::find_if(events.begin(), events.end(),
                                    [](const auto& ev) { return ev["event"] == "restart"; });
  EXPECT_EQ((*restart)["slot"], 1);
  EXPECT_GT(restart - events.begin(), killed - events.begin());
  EXPECT_EQ(events[8]["event"], "reform");
  EXPECT_EQ(events[8]["members"], nlohmann::json::array({0, 2}));
  EXPECT_EQ(events[9]["event"], "job_end");
  EXPECT_EQ(events[9]["status"], result.exit_code);
}

TEST(ProcessLog, AnUnopenableFileIsAnErrorNamingIt) {
  testing::TempDir tmp;
  try {
    ProcessLog log(tmp.file("no/such/folder/processes.jsonl"), 0, Logger::stderr_logger());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no/such/folder/processes.jsonl"), std::string::npos);
  }
}

}  // namespace
}  // namespace dtrain::cli
