#include "nn/dropout.h"

#include <fmt/format.h>

#include <charconv>

#include "autograd/functions.h"

namespace dtrain::nn {

Dropout::Dropout(float p, Rng& rng) : Module("dropout"), p_(p), rng_(rng.split()) {
  if (!(p >= 0.0f && p < 1.0f)) fail(fmt::format("p {} is not in [0, 1)", p));
}

Variable Dropout::forward(const Variable& input) {
  return dtrain::dropout(input, p_, is_training(), rng_);
}

std::map<std::string, std::string> Dropout::extra_state() const {
  const Rng::State s = rng_.state();
  return {{"rng", fmt::format("{:016x}:{:016x}:{:016x}:{:016x}", s[0], s[1], s[2], s[3])}};
}

void Dropout::load_extra_state(const std::map<std::string, std::string>& values, bool apply) {
  for (const auto& [key, value] : values) {
    if (key != "rng") fail(fmt::format("unknown extra state key '{}'", key));
    Rng::State state{};
    const char* at = value.data();
    const char* end = value.data() + value.size();
    bool ok = true;
    for (size_t i = 0; i < state.size() && ok; ++i) {
      if (i > 0) ok = at < end && *at++ == ':';
      if (!ok) break;
      const char* start = at;
      auto result = std::from_chars(at, end, state[i], 16);
      ok = result.ec == std::errc() && result.ptr - start == 16;
      at = result.ptr;
    }
    if (!ok || at != end) {
      fail(fmt::format("extra state 'rng' is '{}', expected four 16-digit hex words joined by ':'",
                       value));
    }
    if (apply) rng_.set_state(state);
  }
}

}  // namespace dtrain::nn
