#include "obs/dashboard_server.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <httplib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string_view>
#include <system_error>

#include "core/error.h"

namespace dtrain::obs {

namespace detail {
// dashboard_page.cpp, generated from src/obs/dashboard/index.html by
// src/obs/dashboard/embed.cmake.
extern const unsigned char kDashboardPage[];
extern const size_t kDashboardPageSize;
}  // namespace detail

std::string_view dashboard_page() {
  return {reinterpret_cast<const char*>(detail::kDashboardPage), detail::kDashboardPageSize};
}

namespace {

constexpr uint64_t kMaxMetricsChunkBytes = 1 << 20;
constexpr uint64_t kMaxRankTailBytes = 256 * 1024;
constexpr uint64_t kMaxProcessesBytes = 4 << 20;
constexpr uint64_t kMaxJobFileBytes = 1 << 20;
constexpr size_t kRankTailLines = 600;

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool is_open() const { return fd_ >= 0; }

 private:
  int fd_;
};

// Opens <run_dir>/<parts...> for reading, every component below run_dir
// with O_NOFOLLOW (a symlink anywhere below the run folder is refused, so
// nothing outside it is read). A closed Fd when a component is missing;
// RunFileRefused for a symlink or a file of another kind.
Fd open_below(const std::string& run_dir, const std::vector<std::string>& parts,
              bool want_directory) {
  Fd dir(open(run_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.is_open()) return Fd();
  std::string shown = run_dir;
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    const std::string& part = parts[i];
    shown += "/" + part;
    if (part.empty() || part == "." || part == ".." || part.find('/') != std::string::npos) {
      throw RunFileRefused(fmt::format("{}: not a name inside the run folder", shown));
    }
    const int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK |
                      (!last || want_directory ? O_DIRECTORY : 0);
    Fd next(openat(dir.get(), part.c_str(), flags));
    if (!next.is_open()) {
      if (errno == ENOENT) return Fd();
      if (errno == ELOOP || errno == ENOTDIR) {
        throw RunFileRefused(
            fmt::format("{}: a symlink or not a {} (refused: the dashboard reads only the run "
                        "folder's own files)",
                        shown, !last || want_directory ? "folder" : "file"));
      }
      throw RunFileRefused(fmt::format("{}: {}", shown, std::strerror(errno)));
    }
    dir = std::move(next);
  }
  struct stat st {};
  if (fstat(dir.get(), &st) != 0 || (!want_directory && !S_ISREG(st.st_mode))) {
    throw RunFileRefused(fmt::format("{}: not a regular file", shown));
  }
  return dir;
}

uint64_t file_size(const Fd& fd) {
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_size);
}

// Up to `length` bytes at `offset` (fewer at the end of the file).
std::string read_at(const Fd& fd, uint64_t offset, uint64_t length) {
  std::string bytes(length, '\0');
  size_t got = 0;
  while (got < length) {
    const ssize_t n =
        pread(fd.get(), bytes.data() + got, length - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  bytes.resize(got);
  return bytes;
}

// Parses the '\n'-terminated lines of `text` into JSON objects; the others
// are counted in `bad_lines`.
std::vector<nlohmann::json> parse_lines(std::string_view text, int64_t& bad_lines) {
  std::vector<nlohmann::json> events;
  size_t start = 0;
  for (size_t eol = text.find('\n'); eol != std::string_view::npos;
       start = eol + 1, eol = text.find('\n', start)) {
    const std::string_view line = text.substr(start, eol - start);
    if (line.empty()) continue;
    nlohmann::json event = nlohmann::json::parse(line, nullptr, false);
    if (event.is_object()) {
      events.push_back(std::move(event));
    } else {
      ++bad_lines;
    }
  }
  return events;
}

// The last complete lines of a file, from at most `max_bytes` before its end.
std::vector<nlohmann::json> read_tail(const Fd& fd, uint64_t max_bytes, size_t max_lines) {
  const uint64_t size = file_size(fd);
  const uint64_t from = size > max_bytes ? size - max_bytes : 0;
  std::string text = read_at(fd, from, size - from);
  if (from > 0) {
    const size_t first = text.find('\n');
    text.erase(0, first == std::string::npos ? text.size() : first + 1);
  }
  int64_t bad = 0;
  std::vector<nlohmann::json> events = parse_lines(text, bad);
  if (events.size() > max_lines) {
    events.erase(events.begin(), events.end() - static_cast<std::ptrdiff_t>(max_lines));
  }
  return events;
}

// Digits only, without a sign or leading junk; nullopt otherwise.
std::optional<int64_t> parse_index(std::string_view digits) {
  if (digits.empty() || digits.size() > 12) return std::nullopt;
  int64_t value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  return value;
}

// The names in a folder opened by open_below (read through a duplicate of
// its descriptor, which closedir closes).
std::vector<std::string> list_names(const Fd& dir) {
  std::vector<std::string> names;
  const int copy = dup(dir.get());
  if (copy < 0) return names;
  DIR* d = fdopendir(copy);
  if (d == nullptr) {
    close(copy);
    return names;
  }
  while (const dirent* entry = readdir(d)) names.emplace_back(entry->d_name);
  closedir(d);
  return names;
}

int64_t int_or(const nlohmann::json& j, const char* key, int64_t fallback) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : fallback;
}

bool same_token(std::string_view given, std::string_view expected) {
  if (given.size() != expected.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i] ^ expected[i]);
  }
  return diff == 0;
}

void send_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_header("Cache-Control", "no-store");
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, status, nlohmann::json{{"error", message}});
}

}  // namespace

std::string random_token() {
  Fd urandom(open("/dev/urandom", O_RDONLY | O_CLOEXEC));
  if (!urandom.is_open()) throw Error("dashboard: cannot open /dev/urandom for the access token");
  const std::string bytes = read_at(urandom, 0, 16);
  if (bytes.size() != 16) throw Error("dashboard: short read from /dev/urandom");
  std::string hex;
  for (char b : bytes) hex += fmt::format("{:02x}", static_cast<unsigned char>(b));
  return hex;
}

nlohmann::json read_metrics(const std::string& run_dir, uint64_t since, uint64_t max_bytes) {
  nlohmann::json out{
      {"offset", since}, {"size", 0}, {"events", nlohmann::json::array()}, {"bad_lines", 0}};
  const Fd fd = open_below(run_dir, {"metrics.jsonl"}, false);
  if (!fd.is_open()) {
    if (since > 0) {
      throw std::out_of_range(
          fmt::format("since={} is beyond the end of {}/metrics.jsonl (0 bytes)", since, run_dir));
    }
    return out;
  }
  const uint64_t size = file_size(fd);
  out["size"] = size;
  if (since > size) {
    throw std::out_of_range(fmt::format("since={} is beyond the end of {}/metrics.jsonl ({} bytes)",
                                        since, run_dir, size));
  }
  const std::string text = read_at(fd, since, std::min(size - since, max_bytes));
  int64_t bad = 0;
  const size_t last_eol = text.rfind('\n');
  uint64_t offset = since;
  if (last_eol != std::string::npos) {
    out["events"] = parse_lines(std::string_view(text).substr(0, last_eol + 1), bad);
    offset += last_eol + 1;
  } else if (text.size() == max_bytes && max_bytes > 0) {
    // One line longer than a whole chunk: skip to its end, counting it as bad.
    uint64_t at = since + text.size();
    while (at < size) {
      const std::string more = read_at(fd, at, std::min<uint64_t>(size - at, 64 * 1024));
      const size_t eol = more.find('\n');
      if (eol != std::string::npos) {
        offset = at + eol + 1;
        ++bad;
        break;
      }
      at += more.size();
    }
  }
  out["offset"] = offset;
  out["bad_lines"] = bad;
  return out;
}

nlohmann::json read_ranks(const std::string& run_dir, size_t tail_lines) {
  std::map<int64_t, nlohmann::json> by_rank;
  const Fd dir = open_below(run_dir, {"ranks"}, true);
  if (dir.is_open()) {
    for (const std::string& name : list_names(dir)) {
      constexpr std::string_view kPrefix = "rank-", kSuffix = ".jsonl";
      if (name.size() <= kPrefix.size() + kSuffix.size() || !name.starts_with(kPrefix) ||
          !name.ends_with(kSuffix)) {
        continue;
      }
      const auto rank = parse_index(std::string_view(name).substr(
          kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size()));
      if (!rank) continue;
      Fd fd;
      try {
        fd = open_below(run_dir, {"ranks", name}, false);
      } catch (const RunFileRefused&) {
        continue;  // a symlink planted among the rank files is not shown
      }
      if (!fd.is_open()) continue;
      by_rank[*rank] = read_tail(fd, kMaxRankTailBytes, tail_lines);
    }
  }
  nlohmann::json ranks = nlohmann::json::array();
  for (auto& [rank, events] : by_rank) {
    ranks.push_back(nlohmann::json{{"rank", rank}, {"events", std::move(events)}});
  }
  return nlohmann::json{{"ranks", std::move(ranks)}};
}

nlohmann::json worker_states(const std::vector<nlohmann::json>& events) {
  std::map<int64_t, nlohmann::json> workers;
  nlohmann::json group = nullptr;
  nlohmann::json job_end = nullptr;
  for (const nlohmann::json& e : events) {
    const std::string kind = e.value("event", "");
    const int64_t slot = int_or(e, "slot", int_or(e, "rank", -1));
    if (kind == "start" || kind == "restart") {
      nlohmann::json& w = workers[slot];
      const int64_t starts = w.is_null() ? 1 : int_or(w, "starts", 0) + 1;
      w = nlohmann::json{{"slot", slot},
                         {"pid", int_or(e, "pid", -1)},
                         {"role", e.value("role", "worker")},
                         {"state", starts > 1 ? "restarted" : "alive"},
                         {"starts", starts},
                         {"exit", nullptr}};
    } else if (kind == "exit") {
      nlohmann::json& w = workers[slot];
      if (w.is_null()) w = nlohmann::json{{"slot", slot}, {"starts", 0}};
      w["pid"] = int_or(e, "pid", int_or(w, "pid", -1));
      if (e.contains("signal")) {
        w["state"] = "killed";
        w["exit"] = fmt::format("killed by signal {}", int_or(e, "signal", 0));
      } else {
        const int64_t status = int_or(e, "status", 0);
        w["state"] = status == 0 ? "exited" : "failed";
        w["exit"] = fmt::format("exited with code {}", status);
      }
    } else if (kind == "reform") {
      group = nlohmann::json{{"generation", int_or(e, "generation", 0)},
                             {"members", e.value("members", nlohmann::json::array())}};
      if (int_or(e, "generation", 0) == 0) continue;
      for (const nlohmann::json& member : group["members"]) {
        if (!member.is_number_integer()) continue;
        auto it = workers.find(member.get<int64_t>());
        if (it == workers.end()) continue;
        const std::string state = it->second.value("state", "");
        if (state == "alive" || state == "restarted") it->second["state"] = "re-formed";
      }
    } else if (kind == "job_end") {
      job_end = e;
    }
  }
  nlohmann::json list = nlohmann::json::array();
  for (auto& [slot, w] : workers) {
    if (!w.contains("role")) w["role"] = "worker";
    list.push_back(std::move(w));
  }
  return nlohmann::json{{"workers", std::move(list)}, {"group", group}, {"job_end", job_end}};
}

nlohmann::json read_processes(const std::string& run_dir) {
  std::vector<nlohmann::json> events;
  const Fd fd = open_below(run_dir, {"processes.jsonl"}, false);
  if (fd.is_open()) events = read_tail(fd, kMaxProcessesBytes, SIZE_MAX);
  nlohmann::json out = worker_states(events);
  out["events"] = std::move(events);
  return out;
}

nlohmann::json list_checkpoints(const std::string& run_dir) {
  std::map<int64_t, nlohmann::json> by_step;
  const Fd dir = open_below(run_dir, {}, true);
  if (dir.is_open()) {
    for (const std::string& name : list_names(dir)) {
      if (!name.starts_with("ckpt-") || !name.ends_with(".dtc")) continue;
      const auto step = parse_index(std::string_view(name).substr(5, name.size() - 9));
      if (!step) continue;
      struct stat st {};
      if (fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
        continue;
      by_step[*step] = nlohmann::json{{"step", *step},
                                      {"name", name},
                                      {"bytes", static_cast<uint64_t>(st.st_size)},
                                      {"time", static_cast<double>(st.st_mtim.tv_sec) +
                                                   1e-9 * static_cast<double>(st.st_mtim.tv_nsec)}};
    }
  }
  nlohmann::json list = nlohmann::json::array();
  for (auto& [step, c] : by_step) list.push_back(std::move(c));
  return nlohmann::json{{"checkpoints", std::move(list)}};
}

DashboardServer::DashboardServer(DashboardOptions options)
    : options_(std::move(options)), server_(std::make_unique<httplib::Server>()) {
  if (options_.port < 0 || options_.port > 65535) {
    throw UsageError(fmt::format("dashboard: port {} is outside 0..65535", options_.port));
  }
  if (options_.host.empty()) throw UsageError("dashboard: the host to listen on is empty");
  if (options_.token.empty()) options_.token = random_token();
  server_->set_read_timeout(5, 0);
  server_->set_write_timeout(5, 0);
  server_->set_keep_alive_timeout(5);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, with which a
  // second server would share a busy port instead of failing to bind.
  server_->set_socket_options([](int socket_fd) {
    const int yes = 1;
    setsockopt(socket_fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  add_routes();
  if (options_.port == 0) {
    port_ = server_->bind_to_any_port(options_.host);
  } else {
    port_ = server_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  if (port_ <= 0) {
    throw CommError(-1, "dashboard",
                    fmt::format("cannot listen on {}:{} (in use, or not an address of this "
                                "machine); pick another port, or 0 for a free one",
                                options_.host, options_.port));
  }
  thread_ = std::jthread([this] {
    server_->listen_after_bind();
    loop_ended_ = true;
  });
}

DashboardServer::~DashboardServer() {
  // stop() only acts once the loop runs: wait for it to start (or to have
  // failed), bounded, then stop it; the jthread joins.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!server_->is_running() && !loop_ended_ && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  server_->stop();
}

std::string DashboardServer::url() const {
  return fmt::format("http://{}:{}/?token={}", options_.host, port_, options_.token);
}

void DashboardServer::add_routes() {
  server_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    std::string given = req.get_header_value("X-Dtrain-Token");
    if (given.empty() && req.has_param("token")) given = req.get_param_value("token");
    if (given.empty()) {
      send_error(res, 401, "this dashboard needs its token (?token=... as printed at its start)");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!same_token(given, options_.token)) {
      send_error(res, 403, "wrong token");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Every handler turns a refused or unreadable file into an error reply;
  // nothing a request names reaches the file system.
  auto guarded = [](auto body) {
    return [body](const httplib::Request& req, httplib::Response& res) {
      try {
        body(req, res);
      } catch (const RunFileRefused& e) {
        send_error(res, 403, e.what());
      } catch (const std::out_of_range& e) {
        send_error(res, 400, e.what());
      } catch (const std::exception& e) {
        send_error(res, 500, e.what());
      }
    };
  };
  server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_header("Cache-Control", "no-store");
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   "img-src data:; connect-src 'self'");
    res.set_content(std::string(dashboard_page()), "text/html; charset=utf-8");
  });
  server_->Get("/api/metrics", guarded([this](const httplib::Request& req, httplib::Response& res) {
                 uint64_t since = 0;
                 if (req.has_param("since")) {
                   const auto parsed = parse_index(req.get_param_value("since"));
                   if (!parsed) {
                     send_error(res, 400, "since must be a byte offset (digits)");
                     return;
                   }
                   since = static_cast<uint64_t>(*parsed);
                 }
                 send_json(res, 200, read_metrics(options_.run_dir, since, kMaxMetricsChunkBytes));
               }));
  server_->Get("/api/ranks", guarded([this](const httplib::Request&, httplib::Response& res) {
                 send_json(res, 200, read_ranks(options_.run_dir, kRankTailLines));
               }));
  server_->Get("/api/processes", guarded([this](const httplib::Request&, httplib::Response& res) {
                 send_json(res, 200, read_processes(options_.run_dir));
               }));
  server_->Get("/api/checkpoints", guarded([this](const httplib::Request&, httplib::Response& res) {
                 send_json(res, 200, list_checkpoints(options_.run_dir));
               }));
  server_->Get("/api/job", guarded([this](const httplib::Request&, httplib::Response& res) {
                 nlohmann::json out{{"path", nullptr}, {"text", nullptr}};
                 if (!options_.job_file.empty()) {
                   Fd fd(open(options_.job_file.c_str(), O_RDONLY | O_CLOEXEC));
                   if (fd.is_open()) {
                     out["path"] = options_.job_file;
                     out["text"] = read_at(fd, 0, std::min(file_size(fd), kMaxJobFileBytes));
                   }
                 } else if (const Fd fd = open_below(options_.run_dir, {"job.toml"}, false);
                            fd.is_open()) {
                   out["path"] = options_.run_dir + "/job.toml";
                   out["text"] = read_at(fd, 0, std::min(file_size(fd), kMaxJobFileBytes));
                 }
                 send_json(res, 200, out);
               }));
  server_->set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) {
      send_error(res, res.status, res.status == 404 ? "no such route" : "request refused");
    }
  });
}

}  // namespace dtrain::obs
