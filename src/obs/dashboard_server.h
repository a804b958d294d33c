// The live dashboard: an HTTP server (cpp-httplib) that shows one run folder
// in a browser while the job runs or after it ended. It only reads files
// that the job's processes write anyway, so it never slows training:
//   <run>/metrics.jsonl          the chief's step, epoch and end events
//   <run>/ranks/rank-<r>.jsonl   every worker's throughput and rows
//   <run>/processes.jsonl        the launcher's start/exit/restart/reform events
//   <run>/ckpt-<step>.dtc        the checkpoints (listed, never read)
//   the job file (DashboardOptions::job_file, else <run>/job.toml)
// Routes (GET only): "/" the page (src/obs/dashboard/index.html, embedded at
// build time; it loads nothing from the network), "/api/metrics?since=BYTES",
// "/api/ranks", "/api/processes", "/api/job", "/api/checkpoints"; the JSON
// each returns is documented in docs/observability.md#live-dashboard. There is no
// route that names a file: every file read is one of the above, opened
// below the run folder with O_NOFOLLOW on every component, so neither "..",
// an absolute path nor a symlink can make the server read outside the run.
//
// Access: every request carries the token (128 random bits from
// /dev/urandom, hex) as the query parameter "token" or the header
// "X-Dtrain-Token"; none → 401, a wrong one → 403, an unknown path → 404.
// The token is compared in constant time.
//
// Ownership and threads: the server owns its socket and a std::jthread
// member that runs httplib's accept loop (its own small thread pool answers
// requests); the destructor stops the loop and joins. Requests are served
// concurrently with the job writing the files: readers take only complete
// lines. Thread safety: the public methods may be called from any thread.
// Errors: the constructor throws CommError when it cannot bind host:port,
// UsageError for a bad host or port, Error when /dev/urandom cannot be read.
// Blocking: the constructor binds (no waiting); the destructor waits for the
// accept loop to end (it polls every few ms) and for requests in flight,
// each bounded by 5 s read and write timeouts.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace httplib {
class Server;
}

namespace dtrain::obs {

struct DashboardOptions {
  // The run's output folder (job.output); read only. Need not exist yet.
  std::string run_dir;
  // The IPv4 address or host name to listen on.
  std::string host = "127.0.0.1";
  // 0: a free port (port() says which).
  int port = 0;
  // The job file to show; empty: <run_dir>/job.toml when there is one.
  std::string job_file;
  // The access token; empty: a fresh random one.
  std::string token;
};

class DashboardServer {
 public:
  explicit DashboardServer(DashboardOptions options);
  ~DashboardServer();
  DashboardServer(const DashboardServer&) = delete;
  DashboardServer& operator=(const DashboardServer&) = delete;

  int port() const { return port_; }
  const std::string& token() const { return options_.token; }
  // "http://HOST:PORT/?token=TOKEN": what to open in a browser.
  std::string url() const;

 private:
  void add_routes();

  DashboardOptions options_;
  std::unique_ptr<httplib::Server> server_;
  int port_ = 0;
  std::atomic<bool> loop_ended_{false};
  std::jthread thread_;
};

// What the routes compute, exposed for tests. Each reads below `run_dir`
// only (see the header) and throws RunFileRefused for a file that is a
// symlink or not a regular file.
class RunFileRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The complete lines of <run_dir>/metrics.jsonl from byte `since`, at most
// about `max_bytes` of them: {"offset": where the next read starts,
// "size": the file's size, "events": [parsed lines], "bad_lines": lines
// that were not JSON objects}. A line longer than max_bytes is skipped
// (counted in bad_lines). A missing file reads as empty; `since` beyond the
// file's end throws std::out_of_range naming both.
nlohmann::json read_metrics(const std::string& run_dir, uint64_t since, uint64_t max_bytes);

// Every <run_dir>/ranks/rank-<r>.jsonl's last `tail_lines` lines:
// {"ranks": [{"rank": r, "events": [...]}, ...]} by rank.
nlohmann::json read_ranks(const std::string& run_dir, size_t tail_lines);

// <run_dir>/processes.jsonl's events and what they mean for every slot:
// {"events": [...], "workers": [{"slot","pid","role","state","starts",
// "exit"}...], "group": {"generation", "members"} or null,
// "job_end": the job_end event or null}. States: "alive", "restarted" (a
// replacement process runs), "re-formed" (alive and a member of a
// generation after the first), "exited" (code 0), "failed" (another
// code), "killed" (by a signal).
nlohmann::json read_processes(const std::string& run_dir);
nlohmann::json worker_states(const std::vector<nlohmann::json>& events);

// {"checkpoints": [{"step","bytes","time"}...]} by step: the regular files
// named ckpt-<step>.dtc in the run folder.
nlohmann::json list_checkpoints(const std::string& run_dir);

// 16 bytes from /dev/urandom as 32 hex digits.
std::string random_token();

// The embedded page (src/obs/dashboard/index.html).
std::string_view dashboard_page();

}  // namespace dtrain::obs
