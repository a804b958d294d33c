#include "comm/rendezvous/slurm_coordinator.h"

#include <fmt/format.h>

#include <charconv>

#include "core/error.h"

namespace dtrain::comm {

namespace {

// One hostlist being expanded, for errors that name it and a position.
class HostlistParser {
 public:
  HostlistParser(const std::string& text, const std::string& where) : text_(text), where_(where) {}

  std::vector<std::string> expand() {
    if (text_.empty()) throw error(0, "is empty");
    std::vector<std::string> hosts;
    size_t start = 0;
    int depth = 0;
    for (size_t i = 0; i <= text_.size(); ++i) {
      const char c = i < text_.size() ? text_[i] : ',';
      if (c == '[') {
        if (depth > 0) throw error(i, "has a '[' inside brackets");
        depth = 1;
      } else if (c == ']') {
        if (depth == 0) throw error(i, "has a ']' without its '['");
        depth = 0;
      } else if (c == ',' && depth == 0) {
        expand_name(start, i, hosts);
        start = i + 1;
      }
    }
    if (depth > 0) throw error(text_.rfind('['), "has a '[' that is never closed");
    return hosts;
  }

 private:
  ConfigError error(size_t position, const std::string& problem) const {
    return ConfigError(
        "environment", where_, 0,
        fmt::format("hostlist '{}' {} (at character {})", text_, problem, position + 1));
  }

  // Appends the hosts of text_[begin, end): literal parts and bracketed range
  // lists, expanded left to right.
  void expand_name(size_t begin, size_t end, std::vector<std::string>& hosts) const {
    if (begin == end) throw error(begin, "has an empty name");
    std::vector<std::string> names{""};
    size_t i = begin;
    while (i < end) {
      const size_t open = text_.find('[', i);
      const size_t literal_end = open < end ? open : end;
      for (std::string& name : names) name += text_.substr(i, literal_end - i);
      if (literal_end == end) break;
      const size_t close = text_.find(']', open);
      names = product(names, expand_ranges(open + 1, close));
      i = close + 1;
    }
    if (hosts.size() + names.size() > kMaxHostlistHosts) {
      throw error(begin, fmt::format("names more than {} hosts", kMaxHostlistHosts));
    }
    hosts.insert(hosts.end(), names.begin(), names.end());
  }

  std::vector<std::string> product(const std::vector<std::string>& prefixes,
                                   const std::vector<std::string>& suffixes) const {
    if (prefixes.size() * suffixes.size() > kMaxHostlistHosts) {
      throw error(0, fmt::format("names more than {} hosts", kMaxHostlistHosts));
    }
    std::vector<std::string> out;
    out.reserve(prefixes.size() * suffixes.size());
    for (const std::string& p : prefixes) {
      for (const std::string& s : suffixes) out.push_back(p + s);
    }
    return out;
  }

  // The numbers of the range list text_[begin, end): "1-3,07".
  std::vector<std::string> expand_ranges(size_t begin, size_t end) const {
    std::vector<std::string> out;
    size_t start = begin;
    for (size_t i = begin; i <= end; ++i) {
      if (i < end && text_[i] != ',') continue;
      if (i == start) throw error(start, "has an empty range");
      const std::string range = text_.substr(start, i - start);
      const size_t dash = range.find('-');
      const std::string low = range.substr(0, dash);
      const std::string high = dash == std::string::npos ? low : range.substr(dash + 1);
      const uint64_t lo = number(low, start);
      const uint64_t hi = number(high, start + (dash == std::string::npos ? 0 : dash + 1));
      if (hi < lo)
        throw error(start, fmt::format("has range '{}' whose end is below its start", range));
      if (hi - lo >= kMaxHostlistHosts || out.size() + (hi - lo + 1) > kMaxHostlistHosts) {
        throw error(start, fmt::format("names more than {} hosts", kMaxHostlistHosts));
      }
      // A leading zero fixes the width: "08-10" is 08 09 10.
      const size_t width = low.size() > 1 && low[0] == '0' ? low.size() : 0;
      for (uint64_t n = lo; n <= hi; ++n) out.push_back(fmt::format("{:0{}}", n, width));
      start = i + 1;
    }
    return out;
  }

  uint64_t number(const std::string& digits, size_t position) const {
    uint64_t value = 0;
    const char* last = digits.data() + digits.size();
    auto [ptr, ec] = std::from_chars(digits.data(), last, value);
    if (digits.empty() || ec != std::errc() || ptr != last || digits.size() > 18) {
      throw error(position, fmt::format("has range bound '{}', not a number", digits));
    }
    return value;
  }

  const std::string& text_;
  const std::string& where_;
};

std::optional<uint64_t> env_number(const std::map<std::string, std::string>& env,
                                   const char* name) {
  const auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  uint64_t value = 0;
  const char* last = it->second.data() + it->second.size();
  auto [ptr, ec] = std::from_chars(it->second.data(), last, value);
  if (it->second.empty() || ec != std::errc() || ptr != last) {
    throw ConfigError("environment", name, 0,
                      fmt::format("'{}' is not a non-negative integer", it->second));
  }
  return value;
}

}  // namespace

std::vector<std::string> expand_hostlist(const std::string& hostlist, const std::string& where) {
  return HostlistParser(hostlist, where).expand();
}

int slurm_coordinator_port(uint64_t job_id, uint64_t step_id) {
  return kSlurmPortBase + static_cast<int>(job_id % 1500) * 8 + static_cast<int>(step_id % 8);
}

std::optional<DerivedCoordinator> derive_slurm_coordinator(
    const std::map<std::string, std::string>& env) {
  const std::optional<uint64_t> job_id = env_number(env, "SLURM_JOB_ID");
  if (!job_id) return std::nullopt;
  const char* step_name = env.count("SLURM_STEP_ID") ? "SLURM_STEP_ID" : "SLURM_STEPID";
  const uint64_t step_id = env_number(env, step_name).value_or(0);
  for (const char* list : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
    const auto it = env.find(list);
    if (it == env.end()) continue;
    const std::string host = expand_hostlist(it->second, list).front();
    const int port = slurm_coordinator_port(*job_id, step_id);
    DerivedCoordinator d;
    d.address = host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                                    : fmt::format("{}:{}", host, port);
    d.source =
        fmt::format("Slurm: the first host of {}, the port of SLURM_JOB_ID={}{}", list, *job_id,
                    env.count(step_name) ? fmt::format(" {}={}", step_name, step_id) : "");
    return d;
  }
  return std::nullopt;
}

}  // namespace dtrain::comm
