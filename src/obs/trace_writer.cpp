#include "obs/trace_writer.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/file_system.h"

namespace dtrain::obs {
namespace {

using Line = fmt::memory_buffer;

// Appends `text` as a JSON string body (quotes, backslashes and control
// characters escaped).
void append_escaped(Line& out, std::string_view text) {
  const bool plain = std::none_of(text.begin(), text.end(), [](char c) {
    return c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20;
  });
  if (plain) {
    out.append(text);
    return;
  }
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      fmt::format_to(std::back_inserter(out), "\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out.push_back(c);
    }
  }
}

void append_args(Line& out, std::span<const TraceArg> args) {
  if (args.empty()) return;
  out.append(std::string_view(",\"args\":{"));
  for (size_t i = 0; i < args.size(); ++i) {
    if (i > 0) out.push_back(',');
    out.push_back('"');
    append_escaped(out, args[i].key);
    fmt::format_to(std::back_inserter(out), "\":{}", args[i].value);
  }
  out.push_back('}');
}

// {"name":"<name>","cat":"<category>","ph":"<phase>"
void open_event(Line& out, std::string_view name, std::string_view category, char phase) {
  out.append(std::string_view("{\"name\":\""));
  append_escaped(out, name);
  out.append(std::string_view("\",\"cat\":\""));
  append_escaped(out, category);
  out.append(std::string_view("\",\"ph\":\""));
  out.push_back(phase);
  out.push_back('"');
}

std::string errno_text(int error) { return std::strerror(error); }

}  // namespace

TraceSteps parse_trace_steps(std::string_view text) {
  const auto colon = text.find(':');
  TraceSteps steps;
  auto number = [](std::string_view s, int64_t& value) {
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    return ec == std::errc() && end == s.data() + s.size() && !s.empty();
  };
  if (colon == std::string_view::npos || !number(text.substr(0, colon), steps.first) ||
      !number(text.substr(colon + 1), steps.last) || steps.first < 1 || steps.last < steps.first) {
    throw UsageError(fmt::format(
        "trace steps '{}': expected N:M with 1 <= N <= M (the updates to record, e.g. \"1:50\")",
        text));
  }
  return steps;
}

std::string trace_path_for_rank(const std::string& path, const std::string& output, int64_t rank,
                                int64_t world_size) {
  if (path.empty()) {
    return (std::filesystem::path(output) / "trace" / fmt::format("rank-{}.json", rank)).string();
  }
  if (world_size <= 1) return path;
  const std::filesystem::path p(path);
  return (p.parent_path() /
          fmt::format("{}-rank{}{}", p.stem().string(), rank, p.extension().string()))
      .string();
}

TraceWriter::TraceWriter(std::string path, int64_t rank, TraceSteps steps)
    : path_(std::move(path)), rank_(rank), steps_(steps) {
  const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw io::FileError("open", path_, errno_text(errno));
  pending_.reserve(kFlushBytes + 4096);
  pending_ += "[\n";
  pending_ += fmt::format(
      "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{0},\"tid\":0,\"args\":{{\"name\":"
      "\"rank {0}\"}}}},\n"
      "{{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":{0},\"tid\":0,\"args\":{{\"sort_"
      "index\":{0}}}}},\n"
      "{{\"name\":\"dtrain_trace\",\"ph\":\"M\",\"pid\":{0},\"tid\":0,\"args\":{{\"rank\":{0},"
      "\"first_step\":{1},\"last_step\":{2}}}}},\n",
      rank_, steps_.first, steps_.last);
  std::lock_guard lock(mutex_);
  write_pending_locked();
}

TraceWriter::~TraceWriter() {
  try {
    close();
  } catch (const Error&) {
    // The destructor cannot report it; close() did for callers that asked.
  }
  if (fd_ >= 0) ::close(fd_);
}

void TraceWriter::set_step(int64_t step) {
  recording_.store(step >= steps_.first && step <= steps_.last, std::memory_order_relaxed);
  std::lock_guard lock(mutex_);
  if (!pending_.empty()) write_pending_locked();
}

int TraceWriter::tid_locked() {
  const std::thread::id me = std::this_thread::get_id();
  for (size_t i = 0; i < threads_.size(); ++i) {
    if (threads_[i] == me) return static_cast<int>(i) + 1;
  }
  threads_.push_back(me);
  const int tid = static_cast<int>(threads_.size());
  fmt::format_to(std::back_inserter(pending_),
                 "{{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":{},\"tid\":{},\"args\":{{"
                 "\"sort_index\":{}}}}},\n",
                 rank_, tid, tid);
  return tid;
}

void TraceWriter::name_thread(std::string_view name) {
  std::lock_guard lock(mutex_);
  if (closed_ || write_error_) return;
  const int tid = tid_locked();
  Line line;
  fmt::format_to(std::back_inserter(line),
                 "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{},\"tid\":{},\"args\":{{"
                 "\"name\":\"",
                 rank_, tid);
  append_escaped(line, name);
  line.append(std::string_view("\"}},\n"));
  append_locked(std::string_view(line.data(), line.size()));
}

void TraceWriter::set_clock_offset(int64_t offset_us, int64_t rtt_us) {
  std::lock_guard lock(mutex_);
  if (closed_ || write_error_) return;
  append_locked(
      fmt::format("{{\"name\":\"clock_offset\",\"ph\":\"M\",\"pid\":{},\"tid\":0,"
                  "\"args\":{{\"offset_us\":{},\"rtt_us\":{}}}}},\n",
                  rank_, offset_us, rtt_us));
  write_pending_locked();
}

void TraceWriter::complete(std::string_view name, std::string_view category, int64_t start_us,
                           int64_t duration_us, std::span<const TraceArg> args) {
  Line line;
  open_event(line, name, category, 'X');
  fmt::format_to(std::back_inserter(line), ",\"ts\":{},\"dur\":{},\"pid\":{},\"tid\":", start_us,
                 duration_us < 0 ? 0 : duration_us, rank_);
  std::lock_guard lock(mutex_);
  if (closed_ || write_error_) return;
  fmt::format_to(std::back_inserter(line), "{}", tid_locked());
  append_args(line, args);
  line.append(std::string_view("},\n"));
  append_locked(std::string_view(line.data(), line.size()));
}

void TraceWriter::async_begin(std::string_view name, std::string_view category, uint64_t id,
                              int64_t ts_us) {
  async_event('b', name, category, id, ts_us);
}

void TraceWriter::async_end(std::string_view name, std::string_view category, uint64_t id,
                            int64_t ts_us) {
  // Recording changes only between steps; an operation begun in a step ends
  // in it (a viewer ignores an end whose begin it never saw anyway).
  async_event('e', name, category, id, ts_us);
}

void TraceWriter::async_event(char phase, std::string_view name, std::string_view category,
                              uint64_t id, int64_t ts_us) {
  if (!recording()) return;
  Line line;
  open_event(line, name, category, phase);
  fmt::format_to(std::back_inserter(line), ",\"id\":\"0x{:x}\",\"ts\":{},\"pid\":{},\"tid\":", id,
                 ts_us, rank_);
  std::lock_guard lock(mutex_);
  if (closed_ || write_error_) return;
  fmt::format_to(std::back_inserter(line), "{}}},\n", tid_locked());
  append_locked(std::string_view(line.data(), line.size()));
}

void TraceWriter::instant(std::string_view name, std::string_view category, int64_t ts_us,
                          std::span<const TraceArg> args) {
  if (!recording()) return;
  Line line;
  open_event(line, name, category, 'i');
  fmt::format_to(std::back_inserter(line), ",\"s\":\"t\",\"ts\":{},\"pid\":{},\"tid\":", ts_us,
                 rank_);
  std::lock_guard lock(mutex_);
  if (closed_ || write_error_) return;
  fmt::format_to(std::back_inserter(line), "{}", tid_locked());
  append_args(line, args);
  line.append(std::string_view("},\n"));
  append_locked(std::string_view(line.data(), line.size()));
}

void TraceWriter::append_locked(std::string_view line) {
  pending_.append(line);
  ++events_;
  if (pending_.size() >= kFlushBytes) write_pending_locked();
}

void TraceWriter::write_pending_locked() {
  size_t done = 0;
  while (done < pending_.size() && !write_error_) {
    const ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      write_error_ = errno_text(errno);
      break;
    }
    done += static_cast<size_t>(n);
  }
  pending_.clear();
}

void TraceWriter::flush() {
  std::lock_guard lock(mutex_);
  if (!closed_) write_pending_locked();
}

void TraceWriter::close() {
  std::lock_guard lock(mutex_);
  if (!closed_) {
    closed_ = true;
    recording_.store(false);
    write_pending_locked();
    // Every line ends in ",\n": replace the last one's with "\n]\n", so the
    // closed file is strict JSON.
    if (!write_error_ && ::lseek(fd_, -2, SEEK_END) >= 0) {
      pending_ = "\n]\n";
      write_pending_locked();
    }
  }
  if (write_error_) {
    std::string error = *write_error_;
    throw io::FileError("write", path_, error);
  }
}

int64_t TraceWriter::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

}  // namespace dtrain::obs
