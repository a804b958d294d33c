#include "testing/test_job.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <string_view>

#include "core/error.h"

namespace dtrain::testing {

namespace {

// The tables a job file usually holds, in the order of examples/*.toml.
constexpr std::array<std::string_view, 7> kTableOrder = {
    "job", "data", "model", "optimizer", "schedule", "train", "distributed"};

size_t table_rank(std::string_view table) {
  const auto it = std::find(kTableOrder.begin(), kTableOrder.end(), table);
  return static_cast<size_t>(it - kTableOrder.begin());  // others after the known ones
}

std::string quoted(std::string_view text) { return fmt::format("\"{}\"", text); }

// A TOML float: the shortest text that reads back as `value`, with a ".0"
// where that text would read as an integer (1.0, not 1).
std::string toml_float(double value) {
  std::string text = fmt::format("{}", value);
  if (text.find_first_of(".eEni") == std::string::npos) text += ".0";
  return text;
}

}  // namespace

TestJob& TestJob::name(const std::string& name) { return set("job.name", quoted(name)); }

TestJob& TestJob::seed(int64_t seed) { return set("job.seed", std::to_string(seed)); }

TestJob& TestJob::synthetic(int64_t samples, int64_t features, int64_t classes) {
  classes_ = classes;
  set("data.dataset", quoted("synthetic"));
  set("data.synthetic_samples", std::to_string(samples));
  set("data.synthetic_features", std::to_string(features));
  set("data.synthetic_classes", std::to_string(classes));
  return set("model.input_shape", fmt::format("[{}]", features));
}

TestJob& TestJob::mlp(std::vector<int64_t> hidden) {
  hidden_ = std::move(hidden);
  has_mlp_ = true;
  return *this;
}

TestJob& TestJob::optimizer(const std::string& type, double lr) {
  set("optimizer.type", quoted(type));
  return set("optimizer.lr", toml_float(lr));
}

TestJob& TestJob::epochs(int64_t epochs) { return set("train.epochs", std::to_string(epochs)); }

TestJob& TestJob::batch(int64_t batch_size) {
  return set("train.batch_size", std::to_string(batch_size));
}

TestJob& TestJob::set(const std::string& key, const std::string& toml_value) {
  const size_t dot = key.rfind('.');
  DTRAIN_CHECK(dot != std::string::npos && dot > 0 && dot + 1 < key.size(),
               "test job key '{}' is not <table>.<name>", key);
  const std::string table = key.substr(0, dot);
  const std::string name = key.substr(dot + 1);
  auto t = std::find_if(tables_.begin(), tables_.end(),
                        [&](const Table& existing) { return existing.name == table; });
  if (t == tables_.end()) {
    // Known tables in their order, any other after them in the order first set.
    const auto at = std::find_if(tables_.begin(), tables_.end(), [&](const Table& existing) {
      return table_rank(existing.name) > table_rank(table);
    });
    t = tables_.insert(at, Table{table, {}});
  }
  const auto k = std::find_if(t->keys.begin(), t->keys.end(),
                              [&](const auto& existing) { return existing.first == name; });
  if (k != t->keys.end()) {
    k->second = toml_value;
  } else {
    t->keys.emplace_back(name, toml_value);
  }
  return *this;
}

std::string TestJob::toml() const {
  DTRAIN_CHECK(!has_mlp_ || classes_ > 0, "test job: mlp() needs synthetic() for its output width");
  std::string out;
  for (const Table& table : tables_) {
    out += fmt::format("\n[{}]\n", table.name);
    for (const auto& [name, value] : table.keys) out += fmt::format("{} = {}\n", name, value);
    if (table.name != "model" || !has_mlp_) continue;
    for (size_t i = 0; i <= hidden_.size(); ++i) {
      const int64_t width = i < hidden_.size() ? hidden_[i] : classes_;
      out +=
          fmt::format("\n[[model.layers]]\ntype = \"linear\"\nname = \"fc{}\"\nout_features = {}\n",
                      i + 1, width);
      if (i < hidden_.size()) out += "\n[[model.layers]]\ntype = \"relu\"\n";
    }
  }
  return out;
}

}  // namespace dtrain::testing
