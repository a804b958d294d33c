#include "cli/test_hooks.h"

#include <fmt/format.h>
#include <signal.h>

#include <charconv>
#include <cmath>
#include <fstream>
#include <optional>
#include <string>

#include "core/error.h"

namespace dtrain::cli {

namespace {

class KillAtStep final : public train::Callback {
 public:
  explicit KillAtStep(int64_t step) : step_(step) {}
  void on_step_end(const train::StepInfo& s) override {
    if (s.step == step_) raise(SIGKILL);
  }

 private:
  int64_t step_;
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

std::optional<int64_t> test_kill_step(const std::map<std::string, std::string>& env, int slot) {
  const auto knob = env.find("DTRAIN_TEST_KILL_AT_STEP");
  if (knob == env.end()) return std::nullopt;
  const std::string& text = knob->second;
  const size_t colon = text.find(':');
  int64_t named_slot = 0;
  int64_t step = 0;
  if (colon == std::string::npos ||
      !parse_int(std::string_view(text).substr(0, colon), named_slot) ||
      !parse_int(std::string_view(text).substr(colon + 1), step) || named_slot < 0 || step < 0) {
    throw ConfigError(fmt::format("DTRAIN_TEST_KILL_AT_STEP='{}': expected SLOT:STEP", text));
  }
  const auto restart = env.find("DTRAIN_RESTART_COUNT");
  if (restart != env.end() && restart->second != "0") return std::nullopt;
  if (named_slot != slot) return std::nullopt;
  return step;
}

std::unique_ptr<train::Callback> test_kill_switch(const std::map<std::string, std::string>& env,
                                                  int slot) {
  const std::optional<int64_t> step = test_kill_step(env, slot);
  if (!step) return nullptr;
  return std::make_unique<KillAtStep>(*step);
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
                    parse_double(entry.substr(c2 + 1), per_row) && fixed >= 0.0 &&
                    per_row >= 0.0 && std::isfinite(fixed) && std::isfinite(per_row);
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

train::RunHooks test_hooks(const std::map<std::string, std::string>& env,
                           const comm::LaunchInfo& launch) {
  train::RunHooks hooks;
  test_compute_time(env, 0);  // a malformed value fails at once
  if (env.count("DTRAIN_TEST_COMPUTE_SECONDS") != 0) {
    hooks.modelled_compute = [env](int64_t worker) { return test_compute_time(env, worker); };
  }
  if (test_kill_step(env, launch.rank)) {
    hooks.trainer_callback = [env](int slot) { return test_kill_switch(env, slot); };
    const auto at = static_cast<uint64_t>(*test_kill_step(env, launch.rank));
    hooks.on_server_version = [at](uint64_t version) {
      if (version == at) raise(SIGKILL);
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
