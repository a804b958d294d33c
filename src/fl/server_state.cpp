#include "fl/server_state.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <string>
#include <utility>

#include "core/error.h"

namespace dtrain::fl {

io::Checkpoint to_checkpoint(const ServerState& state) {
  io::Checkpoint ckpt;
  ckpt.step = state.round;
  ckpt.metadata[std::string(kRejectedUpdatesKey)] = std::to_string(state.rejected_updates);
  for (const auto& [key, value] : state.accountant) {
    ckpt.metadata[std::string(kAccountantPrefix) + key] = value;
  }
  StateDict server;
  server.insert(std::string(kGlobalTensor),
                Tensor::from_vector(state.weights, {static_cast<int64_t>(state.weights.size())}));
  server.merge(state.optimizer, std::string(kServerOptimizerPrefix));
  ckpt.add_section(std::string(kServerSection), std::move(server));
  return ckpt;
}

ServerState from_checkpoint(const io::Checkpoint& checkpoint, int64_t model_size) {
  auto fail = [&](const std::string& problem) {
    throw UsageError(fmt::format("server state (round {}): {}", checkpoint.step, problem));
  };
  const std::string section_name(kServerSection);
  if (!checkpoint.has_section(section_name)) {
    std::vector<std::string> names;
    for (const auto& [name, dict] : checkpoint.sections) names.push_back(name);
    fail(fmt::format(
        "no '{}' section (sections: {})", section_name,
        names.empty() ? std::string("none") : fmt::format("{}", fmt::join(names, ", "))));
  }
  const StateDict& server = checkpoint.section(section_name);
  const std::string global_name(kGlobalTensor);
  if (!server.contains(global_name)) {
    fail(fmt::format("no '{}' tensor in section '{}'", global_name, section_name));
  }
  // Every tensor of the section (the weights, the optimizer's moments) is one
  // value per model value.
  for (const auto& [name, tensor] : server) {
    if (tensor.shape() != Shape{model_size}) {
      fail(fmt::format("'{}' has {} values{}, the model has {}", name, tensor.numel(),
                       tensor.shape().size() == 1
                           ? std::string()
                           : fmt::format(" in {} dimensions", tensor.shape().size()),
                       model_size));
    }
  }
  const std::string rejected_key(kRejectedUpdatesKey);
  const auto it = checkpoint.metadata.find(rejected_key);
  if (it == checkpoint.metadata.end()) fail(fmt::format("missing metadata '{}'", rejected_key));
  int64_t rejected = 0;
  const std::string& text = it->second;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), rejected);
  if (r.ec != std::errc() || r.ptr != text.data() + text.size() || rejected < 0) {
    fail(fmt::format("metadata '{}' is '{}', expected a non-negative integer", rejected_key, text));
  }

  ServerState state;
  state.round = checkpoint.step;
  const auto global = server.at(global_name).span();
  state.weights.assign(global.begin(), global.end());
  state.optimizer = server.sub(std::string(kServerOptimizerPrefix)).clone();
  state.rejected_updates = rejected;
  const std::string prefix(kAccountantPrefix);
  for (const auto& [key, value] : checkpoint.metadata) {
    if (key.rfind(prefix, 0) == 0) state.accountant[key.substr(prefix.size())] = value;
  }
  return state;
}

}  // namespace dtrain::fl
