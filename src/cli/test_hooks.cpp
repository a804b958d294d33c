#include "cli/test_hooks.h"

#include <fmt/format.h>
#include <signal.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "core/error.h"

namespace dtrain::cli {

namespace {

// Raises SIGKILL after step `kill` and SIGSTOP after step `stop` (each
// optional).
class SignalAtStep final : public train::Callback {
 public:
  SignalAtStep(std::optional<int64_t> kill, std::optional<int64_t> stop)
      : kill_(kill), stop_(stop) {}
  void on_step_end(const train::StepInfo& s) override {
    if (stop_ && s.step == *stop_) raise(SIGSTOP);
    if (kill_ && s.step == *kill_) raise(SIGKILL);
  }

 private:
  std::optional<int64_t> kill_;
  std::optional<int64_t> stop_;
};

// Sleeps `ms` after every step (after `inner`'s, if any): paces a job so
// that it lasts while a test watches it.
class PacedSteps final : public train::Callback {
 public:
  PacedSteps(int64_t ms, std::unique_ptr<train::Callback> inner)
      : ms_(ms), inner_(std::move(inner)) {}
  void on_step_end(const train::StepInfo& s) override {
    if (inner_) inner_->on_step_end(s);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms_));
  }

 private:
  int64_t ms_;
  std::unique_ptr<train::Callback> inner_;
};

bool parse_int(std::string_view text, int64_t& out) {
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), out);
  return error == std::errc() && end == text.data() + text.size();
}

bool parse_double(const std::string& text, double& out) {
  try {
    size_t used = 0;
    out = std::stod(text, &used);
    return used == text.size();
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

std::optional<int64_t> test_slot_value(const std::map<std::string, std::string>& env,
                                       const std::string& variable, int64_t slot,
                                       const std::string& unit, int64_t min_value) {
  const auto knob = env.find(variable);
  if (knob == env.end()) return std::nullopt;
  const std::string& text = knob->second;
  std::optional<int64_t> mine;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string_view entry = std::string_view(text).substr(start, comma - start);
    const size_t colon = entry.find(':');
    int64_t named_slot = 0;
    int64_t value = 0;
    if (colon == std::string_view::npos || !parse_int(entry.substr(0, colon), named_slot) ||
        !parse_int(entry.substr(colon + 1), value) || named_slot < 0 || value < min_value) {
      throw ConfigError(
          fmt::format("{}='{}': expected SLOT:{}[,SLOT:{}...] entries ({} at least "
                      "{}), got '{}'",
                      variable, text, unit, unit, unit, min_value, entry));
    }
    if (named_slot == slot && !mine) mine = value;
    start = comma + 1;
  }
  const auto restart = env.find("DTRAIN_RESTART_COUNT");
  if (restart != env.end() && restart->second != "0") return std::nullopt;
  return mine;
}

std::optional<int64_t> test_kill_step(const std::map<std::string, std::string>& env, int slot) {
  return test_slot_value(env, "DTRAIN_TEST_KILL_AT_STEP", slot, "STEP", 0);
}

std::optional<int64_t> test_stop_step(const std::map<std::string, std::string>& env, int slot) {
  return test_slot_value(env, "DTRAIN_TEST_STOP_AT_STEP", slot, "STEP", 0);
}

std::unique_ptr<train::Callback> test_kill_switch(const std::map<std::string, std::string>& env,
                                                  int slot) {
  const std::optional<int64_t> kill = test_kill_step(env, slot);
  const std::optional<int64_t> stop = test_stop_step(env, slot);
  if (!kill && !stop) return nullptr;
  return std::make_unique<SignalAtStep>(kill, stop);
}

std::optional<train::ModelledTime> test_compute_time(const std::map<std::string, std::string>& env,
                                                     int64_t worker) {
  const auto knob = env.find("DTRAIN_TEST_COMPUTE_SECONDS");
  if (knob == env.end()) return std::nullopt;
  const std::string& text = knob->second;
  std::optional<std::pair<double, double>> mine, all;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string entry = text.substr(start, comma - start);
    const size_t c1 = entry.find(':');
    const size_t c2 = c1 == std::string::npos ? c1 : entry.find(':', c1 + 1);
    int64_t rank = -1;
    double fixed = 0.0, per_row = 0.0;
    const std::string who = entry.substr(0, c1);
    const bool ok = c2 != std::string::npos && (who == "all" || parse_int(who, rank)) &&
                    parse_double(entry.substr(c1 + 1, c2 - c1 - 1), fixed) &&
                    parse_double(entry.substr(c2 + 1), per_row) && fixed >= 0.0 && per_row >= 0.0 &&
                    std::isfinite(fixed) && std::isfinite(per_row);
    if (!ok) {
      throw ConfigError(fmt::format(
          "DTRAIN_TEST_COMPUTE_SECONDS='{}': expected RANK:FIXED:PER_ROW entries, got '{}'", text,
          entry));
    }
    if (who == "all") {
      all.emplace(fixed, per_row);
    } else if (rank == worker) {
      mine.emplace(fixed, per_row);
    }
    start = comma + 1;
  }
  const auto chosen = mine ? mine : all;
  if (!chosen) return std::nullopt;
  return train::ModelledTime{chosen->first, chosen->second};
}

void test_stop_before_claim(const std::map<std::string, std::string>& env, Logger& logger) {
  const auto it = env.find("DTRAIN_TEST_AGENT_STOP_BEFORE_CLAIM");
  if (it == env.end() || it->second.empty()) return;
  if (it->second != "1") {
    throw ConfigError(
        fmt::format("DTRAIN_TEST_AGENT_STOP_BEFORE_CLAIM='{}': expected 1", it->second));
  }
  logger.warn("agent: stopped before claiming a node index (DTRAIN_TEST_AGENT_STOP_BEFORE_CLAIM)");
  raise(SIGSTOP);
}

bool test_agent_blind(const std::map<std::string, std::string>& env) {
  const auto it = env.find("DTRAIN_TEST_AGENT_BLIND");
  if (it == env.end() || it->second.empty()) return false;
  if (it->second != "1") {
    throw ConfigError(fmt::format("DTRAIN_TEST_AGENT_BLIND='{}': expected 1", it->second));
  }
  return true;
}

train::RunHooks test_hooks(const std::map<std::string, std::string>& env,
                           const comm::LaunchInfo& launch) {
  train::RunHooks hooks;
  test_compute_time(env, 0);  // a malformed value fails at once
  if (env.count("DTRAIN_TEST_COMPUTE_SECONDS") != 0) {
    hooks.modelled_compute = [env](int64_t worker) { return test_compute_time(env, worker); };
  }
  const auto kill = test_kill_step(env, launch.rank);
  const auto stop = test_stop_step(env, launch.rank);
  if (kill || stop) {
    hooks.trainer_callback = [env](int slot) { return test_kill_switch(env, slot); };
    hooks.on_server_version = [kill, stop](uint64_t version) {
      if (stop && version == static_cast<uint64_t>(*stop)) raise(SIGSTOP);
      if (kill && version == static_cast<uint64_t>(*kill)) raise(SIGKILL);
    };
  }
  if (const auto pace = env.find("DTRAIN_TEST_STEP_MS"); pace != env.end()) {
    int64_t ms = 0;
    if (!parse_int(pace->second, ms) || ms < 0 || ms > 60000) {
      throw ConfigError(
          fmt::format("DTRAIN_TEST_STEP_MS='{}': expected milliseconds in 0..60000", pace->second));
    }
    hooks.trainer_callback = [inner = std::move(hooks.trainer_callback), ms](int slot) {
      return std::unique_ptr<train::Callback>(
          std::make_unique<PacedSteps>(ms, inner ? inner(slot) : nullptr));
    };
  }
  const auto gate = env.find("DTRAIN_TEST_JOIN_GATE");
  if (gate != env.end() && launch.settings.restart_count > 0) {
    hooks.before_build = [fifo = gate->second] {
      std::ifstream in(fifo);
      std::string line;
      std::getline(in, line);
    };
  }
  return hooks;
}

}  // namespace dtrain::cli
