#include "obs/trace_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "core/error.h"
#include "io/file_system.h"

namespace dtrain::obs {
namespace {

using json = nlohmann::json;
using Interval = std::pair<int64_t, int64_t>;  // [begin, end) in microseconds

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

void take_metadata(TraceFile& file, const json& event) {
  if (event.value("ph", "") != "M") return;
  const std::string name = event.value("name", "");
  const json args = event.value("args", json::object());
  if (name == "dtrain_trace" && args.contains("rank")) file.rank = args["rank"].get<int64_t>();
  if (name == "clock_offset") {
    file.clock_offset_us = args.value("offset_us", int64_t{0});
    file.clock_rtt_us = args.value("rtt_us", int64_t{0});
  }
}

// Sorted, disjoint union of `spans`.
std::vector<Interval> union_of(std::vector<Interval> spans) {
  std::sort(spans.begin(), spans.end());
  std::vector<Interval> out;
  for (const Interval& s : spans) {
    if (!out.empty() && s.first <= out.back().second) {
      out.back().second = std::max(out.back().second, s.second);
    } else {
      out.push_back(s);
    }
  }
  return out;
}

// Length of `span` inside the sorted disjoint `cover`.
int64_t covered(const Interval& span, const std::vector<Interval>& cover) {
  int64_t total = 0;
  auto it = std::upper_bound(cover.begin(), cover.end(), Interval{span.first, INT64_MAX});
  if (it != cover.begin()) --it;
  for (; it != cover.end() && it->first < span.second; ++it) {
    const int64_t lo = std::max(span.first, it->first), hi = std::min(span.second, it->second);
    if (hi > lo) total += hi - lo;
  }
  return total;
}

}  // namespace

TraceFile parse_trace(const std::string& text, const std::string& path) {
  TraceFile file;
  file.path = path;
  // Lines, remembering whether the last one ended with a newline.
  std::vector<std::string_view> lines;
  size_t at = 0;
  while (at < text.size()) {
    const size_t nl = text.find('\n', at);
    if (nl == std::string::npos) {
      lines.push_back(std::string_view(text).substr(at));
      break;
    }
    lines.push_back(std::string_view(text).substr(at, nl - at));
    at = nl + 1;
  }
  size_t first = 0;
  while (first < lines.size() && trim(lines[first]).empty()) ++first;
  if (first == lines.size()) {
    throw DataError(fmt::format("trace file {}: empty (no '[' line): not a trace", path));
  }
  if (trim(lines[first]) != "[") {
    throw DataError(
        fmt::format("trace file {}: line {}: expected '[' (a Chrome trace in JSON "
                    "array format, one event per line), got '{:.40}'",
                    path, first + 1, trim(lines[first])));
  }
  std::vector<size_t> content;  // indices of the non-empty lines after '['
  for (size_t i = first + 1; i < lines.size(); ++i) {
    if (!trim(lines[i]).empty()) content.push_back(i);
  }
  for (size_t k = 0; k < content.size(); ++k) {
    const size_t i = content[k];
    std::string_view line = trim(lines[i]);
    if (file.closed) {
      throw DataError(
          fmt::format("trace file {}: line {}: text after the closing ']'", path, i + 1));
    }
    if (line == "]") {
      file.closed = true;
      continue;
    }
    const bool last = k + 1 == content.size();
    // The writer ends every event line with ",\n", but the one before ']'.
    const bool comma = line.back() == ',';
    const bool before_close = !last && trim(lines[content[k + 1]]) == "]";
    if (comma) line.remove_suffix(1);
    json event = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool parsed = !event.is_discarded() && event.is_object();
    if (!parsed || (!comma && !before_close)) {
      if (last) {
        file.truncated = true;  // a killed writer's last line, cut anywhere
        break;
      }
      if (parsed) {
        throw DataError(fmt::format("trace file {}: line {}: no ',' after the event", path, i + 1));
      }
      throw DataError(fmt::format("trace file {}: line {}: not a JSON event object: '{:.60}'", path,
                                  i + 1, line));
    }
    if (event.empty()) continue;
    take_metadata(file, event);
    if (file.rank < 0 && event.contains("pid") && event["pid"].is_number_integer()) {
      file.rank = event["pid"].get<int64_t>();
    }
    file.events.push_back(std::move(event));
  }
  return file;
}

TraceFile read_trace_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io::FileError("read", path, "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_trace(text.str(), path);
}

MergeResult merge_traces(const std::vector<TraceFile>& files) {
  MergeResult out;
  std::set<int64_t> ranks;
  std::string& s = out.json;
  s += "[\n";
  bool first_event = true;
  for (const TraceFile& f : files) {
    if (!ranks.insert(f.rank).second) {
      throw DataError(
          fmt::format("trace merge: {} holds rank {}, as an earlier file does", f.path, f.rank));
    }
    if (f.truncated) {
      out.notes.push_back(fmt::format(
          "{}: rank {}: the last line was cut (the process was killed?); it was dropped", f.path,
          f.rank));
    } else if (!f.closed) {
      out.notes.push_back(fmt::format(
          "{}: rank {}: not closed (the process was killed?); read to its end", f.path, f.rank));
    }
    const int64_t shift = f.clock_offset_us ? -*f.clock_offset_us : 0;
    if (!f.clock_offset_us && f.rank != 0) {
      out.notes.push_back(fmt::format(
          "{}: rank {}: no clock offset recorded; its times are not shifted", f.path, f.rank));
    }
    for (const json& e : f.events) {
      json event = e;
      if (event.contains("ts") && event["ts"].is_number()) {
        event["ts"] = event["ts"].get<int64_t>() + shift;
      }
      if (!first_event) s += ",\n";
      first_event = false;
      s += event.dump();
    }
  }
  s += "\n]\n";
  return out;
}

std::vector<RankTraceStats> trace_stats(const std::vector<json>& events) {
  struct Acc {
    RankTraceStats stats;
    std::vector<Interval> backward;
    std::vector<Interval> comm;
  };
  std::map<int64_t, Acc> by_rank;
  for (const json& e : events) {
    if (e.value("ph", "") != "X") continue;
    const int64_t rank = e.value("pid", int64_t{0});
    Acc& acc = by_rank[rank];
    acc.stats.rank = rank;
    const std::string name = e.value("name", "");
    const std::string cat = e.value("cat", "");
    const int64_t ts = e.value("ts", int64_t{0}), dur = e.value("dur", int64_t{0});
    RankTraceStats& st = acc.stats;
    if (cat == "step") {
      if (name == "step") {
        ++st.steps;
        st.step_us += dur;
      } else if (name == "forward") {
        st.forward_us += dur;
      } else if (name == "backward") {
        st.backward_us += dur;
        acc.backward.emplace_back(ts, ts + dur);
      } else if (name == "wait") {
        st.wait_us += dur;
      } else if (name == "update") {
        st.update_us += dur;
      }
    } else if (cat == "comm" && name != "broadcast" && name != "barrier") {
      acc.comm.emplace_back(ts, ts + dur);
      st.reduce_us += dur;
    } else if (cat == "ps") {
      if (name == "push") st.push_us += dur;
      if (name == "pull") st.pull_us += dur;
    } else if (cat == "io" && name == "checkpoint") {
      st.checkpoint_us += dur;
    } else if (cat == "data") {
      st.data_wait_us += dur;
    } else if (cat == "eval") {
      st.eval_us += dur;
    }
  }
  std::vector<RankTraceStats> out;
  for (auto& [rank, acc] : by_rank) {
    const std::vector<Interval> cover = union_of(std::move(acc.backward));
    for (const Interval& c : acc.comm) acc.stats.reduce_hidden_us += covered(c, cover);
    out.push_back(acc.stats);
  }
  return out;
}

std::string format_trace_stats(const std::vector<RankTraceStats>& stats) {
  auto ms = [](int64_t us) { return static_cast<double>(us) / 1000.0; };
  std::string s = fmt::format("{:>4} {:>5} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9}\n",
                              "rank", "steps", "step_ms", "fwd_ms", "bwd_ms", "reduce_ms", "hidden",
                              "wait_ms", "update_ms", "push_ms", "pull_ms");
  for (const RankTraceStats& r : stats) {
    s += fmt::format(
        "{:>4} {:>5} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f} {:>5.0f}% {:>9.1f} {:>9.1f} {:>9.1f} "
        "{:>9.1f}\n",
        r.rank, r.steps, ms(r.step_us), ms(r.forward_us), ms(r.backward_us), ms(r.reduce_us),
        100.0 * r.hidden_share(), ms(r.wait_us), ms(r.update_us), ms(r.push_us), ms(r.pull_us));
  }
  return s;
}

}  // namespace dtrain::obs
