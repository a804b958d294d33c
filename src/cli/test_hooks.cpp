#include "cli/test_hooks.h"

#include <fmt/format.h>
#include <signal.h>

#include <charconv>

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

}  // namespace dtrain::cli
