#include "fl/server_optimizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>
#include <utility>

#include "core/error.h"

namespace dtrain::fl {

namespace {

constexpr const char* kWhere = "server optimizer";

bool is_adaptive(const std::string& type) {
  return type == "adam" || type == "yogi" || type == "adagrad";
}

void check_config(const ServerOptimizerConfig& c) {
  if (c.type != "none" && c.type != "momentum" && !is_adaptive(c.type)) {
    throw ConfigError(fmt::format(
        "fl.server_optimizer: unknown type '{}' (none, momentum, adam, yogi, adagrad)", c.type));
  }
  auto in_range = [](const char* key, double value, double low, double high) {
    if (!(value >= low && value <= high)) {
      throw ConfigError(fmt::format("fl.{}: {} is not in [{}, {}]", key, value, low, high));
    }
  };
  in_range("server_lr", c.lr, 0.0, 1e6);
  in_range("server_momentum", c.momentum, 0.0, 1.0);
  in_range("server_beta1", c.beta1, 0.0, 1.0);
  in_range("server_beta2", c.beta2, 0.0, 1.0);
  if (!(c.tau > 0.0) || !std::isfinite(c.tau)) {
    throw ConfigError(fmt::format("fl.server_tau: {} is not a positive number", c.tau));
  }
}

// Metadata keys of the state dict; scalars are shortest round-trip text.
constexpr const char* kTypeKey = "type";
constexpr const char* kSizeKey = "model_size";
constexpr const char* kStepsKey = "steps";

std::string exact(double value) { return fmt::format("{}", value); }

}  // namespace

ServerOptimizer::ServerOptimizer(const ServerOptimizerConfig& config, int64_t model_size)
    : config_(config), model_size_(model_size) {
  check_config(config_);
  if (model_size < 0) {
    throw UsageError(fmt::format("{}: model size {} is negative", kWhere, model_size));
  }
  const auto n = static_cast<size_t>(model_size);
  if (config_.type != "none") m_.assign(n, 0.0f);
  if (is_adaptive(config_.type)) {
    // v_{-1} = tau^2 (Reddi et al. 2021, Algorithm 2).
    v_.assign(n, static_cast<float>(config_.tau * config_.tau));
  }
}

void ServerOptimizer::apply(std::span<float> weights, std::span<const float> delta) {
  if (static_cast<int64_t>(weights.size()) != model_size_ ||
      static_cast<int64_t>(delta.size()) != model_size_) {
    throw UsageError(
        fmt::format("{} '{}': apply: weights have {} values and delta {}, the model {}", kWhere,
                    config_.type, weights.size(), delta.size(), model_size_));
  }
  // Each element is computed in double from the float state and rounded once
  // to the float it is stored as.
  const double lr = config_.lr;
  const std::string& type = config_.type;
  if (type == "none") {
    for (size_t i = 0; i < weights.size(); ++i) {
      weights[i] = static_cast<float>(weights[i] + lr * delta[i]);
    }
  } else if (type == "momentum") {
    const double beta = config_.momentum;
    for (size_t i = 0; i < weights.size(); ++i) {
      m_[i] = static_cast<float>(beta * m_[i] + delta[i]);
      weights[i] = static_cast<float>(weights[i] + lr * m_[i]);
    }
  } else {
    const double b1 = config_.beta1;
    const double b2 = config_.beta2;
    const double tau = config_.tau;
    for (size_t i = 0; i < weights.size(); ++i) {
      const double d = delta[i];
      const double d2 = d * d;
      m_[i] = static_cast<float>(b1 * m_[i] + (1.0 - b1) * d);
      const double v = v_[i];
      if (type == "adam") {
        v_[i] = static_cast<float>(b2 * v + (1.0 - b2) * d2);
      } else if (type == "yogi") {
        const double sign = v > d2 ? 1.0 : (v < d2 ? -1.0 : 0.0);
        v_[i] = static_cast<float>(v - (1.0 - b2) * d2 * sign);
      } else {
        v_[i] = static_cast<float>(v + d2);
      }
      weights[i] = static_cast<float>(weights[i] + lr * m_[i] / (std::sqrt(double{v_[i]}) + tau));
    }
  }
  ++steps_;
}

StateDict ServerOptimizer::state_dict() const {
  StateDict dict;
  auto& meta = dict.metadata();
  meta[kTypeKey] = config_.type;
  meta[kSizeKey] = std::to_string(model_size_);
  meta[kStepsKey] = std::to_string(steps_);
  meta["lr"] = exact(config_.lr);
  meta["momentum"] = exact(config_.momentum);
  meta["beta1"] = exact(config_.beta1);
  meta["beta2"] = exact(config_.beta2);
  meta["tau"] = exact(config_.tau);
  if (config_.type != "none") dict.insert("m", Tensor::from_vector(m_, {model_size_}));
  if (is_adaptive(config_.type)) dict.insert("v", Tensor::from_vector(v_, {model_size_}));
  return dict;
}

void ServerOptimizer::load_state_dict(const StateDict& state) {
  // Everything is checked before anything changes.
  const std::string who = fmt::format("{} '{}': load_state_dict", kWhere, config_.type);
  auto fail = [&](const std::string& problem) {
    throw UsageError(fmt::format("{}: {}", who, problem));
  };
  const auto& meta = state.metadata();
  auto get = [&](const char* key) -> const std::string& {
    const auto it = meta.find(key);
    if (it == meta.end()) fail(fmt::format("missing metadata '{}'", key));
    return it->second;
  };
  auto get_int = [&](const char* key) {
    const std::string& text = get(key);
    int64_t value = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), value);
    if (r.ec != std::errc() || r.ptr != text.data() + text.size() || value < 0) {
      fail(fmt::format("metadata '{}' is '{}', expected a non-negative integer", key, text));
    }
    return value;
  };
  auto get_double = [&](const char* key) {
    const std::string& text = get(key);
    double value = 0.0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), value);
    if (r.ec != std::errc() || r.ptr != text.data() + text.size() || !std::isfinite(value)) {
      fail(fmt::format("metadata '{}' is '{}', expected a finite number", key, text));
    }
    return value;
  };

  if (get(kTypeKey) != config_.type) {
    fail(fmt::format("the state is of a '{}' server optimizer", get(kTypeKey)));
  }
  const int64_t size = get_int(kSizeKey);
  if (size != model_size_) {
    fail(fmt::format("the state is for {} values, the model has {}", size, model_size_));
  }
  const int64_t steps = get_int(kStepsKey);
  ServerOptimizerConfig config = config_;
  config.lr = get_double("lr");
  config.momentum = get_double("momentum");
  config.beta1 = get_double("beta1");
  config.beta2 = get_double("beta2");
  config.tau = get_double("tau");
  try {
    check_config(config);
  } catch (const ConfigError& e) {
    fail(fmt::format("the state's hyperparameters are invalid: {}", e.what()));
  }

  std::vector<std::string> expected;
  if (config_.type != "none") expected.emplace_back("m");
  if (is_adaptive(config_.type)) expected.emplace_back("v");
  for (const auto& [name, tensor] : state) {
    if (std::find(expected.begin(), expected.end(), name) == expected.end()) {
      fail(fmt::format("unexpected tensor '{}'", name));
    }
  }
  auto values = [&](const std::string& name) {
    if (!state.contains(name)) fail(fmt::format("missing tensor '{}'", name));
    const Tensor& t = state.at(name);
    if (t.shape() != Shape{model_size_}) {
      fail(fmt::format("tensor '{}' has {} values in {} dimensions, expected {} in 1", name,
                       t.numel(), t.shape().size(), model_size_));
    }
    return std::vector<float>(t.span().begin(), t.span().end());
  };
  std::vector<float> m = config_.type != "none" ? values("m") : std::vector<float>{};
  std::vector<float> v = is_adaptive(config_.type) ? values("v") : std::vector<float>{};

  config_ = std::move(config);
  steps_ = steps;
  m_ = std::move(m);
  v_ = std::move(v);
}

}  // namespace dtrain::fl
