#include "cli/job_file.h"

#include <cmath>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "core/error.h"
#include "io/file_system.h"

namespace dtrain::cli {

namespace {

int64_t line_of(const toml::node& node) { return static_cast<int64_t>(node.source().begin.line); }

template <typename T>
struct is_optional : std::false_type {};
template <typename T>
struct is_optional<std::optional<T>> : std::true_type {};

// Reads the keys of one table into fields, checking types; finish() rejects
// any key that no read() asked for.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string prefix, const std::string& file)
      : table_(table), prefix_(std::move(prefix)), file_(file) {}

  template <typename T>
  void read(const char* key, T& out) {
    known_.insert(key);
    const toml::node* node = table_.get(key);
    if (node == nullptr) return;
    out = convert<T>(*node, key);
  }

  // Marks a key as known without reading it (it is read elsewhere).
  void allow(const char* key) { known_.insert(key); }

  void finish() const {
    for (const auto& [key, node] : table_) {
      if (known_.count(std::string(key.str())) == 0) {
        throw ConfigError(file_, full(key.str()), line_of(node),
                          fmt::format("unknown key (known: {})", fmt::join(known_, ", ")));
      }
    }
  }

  std::string full(std::string_view key) const {
    return prefix_.empty() ? std::string(key) : prefix_ + "." + std::string(key);
  }
  const std::string& file() const { return file_; }

 private:
  [[noreturn]] void wrong_type(const toml::node& node, const char* key, const char* expected) const {
    throw ConfigError(file_, full(key), line_of(node),
                      fmt::format("expected {}, got {}", expected, describe(node)));
  }
  static std::string describe(const toml::node& node) {
    std::ostringstream os;
    os << node.type();
    return os.str();
  }

  template <typename T>
  T convert(const toml::node& node, const char* key) const {
    if constexpr (std::is_same_v<T, bool>) {
      if (auto v = node.value_exact<bool>()) return *v;
      wrong_type(node, key, "a boolean");
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (auto v = node.value_exact<std::string>()) return *v;
      wrong_type(node, key, "a string");
    } else if constexpr (std::is_integral_v<T>) {
      auto v = node.value_exact<int64_t>();
      if (!v) wrong_type(node, key, "an integer");
      if (*v < 0) {
        throw ConfigError(file_, full(key), line_of(node),
                          fmt::format("must not be negative, got {}", *v));
      }
      return static_cast<T>(*v);
    } else if constexpr (std::is_floating_point_v<T>) {
      if (auto v = node.value_exact<double>()) return static_cast<T>(*v);
      if (auto v = node.value_exact<int64_t>()) return static_cast<T>(*v);
      wrong_type(node, key, "a number");
    } else if constexpr (is_optional<T>::value) {
      return convert<typename T::value_type>(node, key);
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      const toml::array* array = node.as_array();
      if (array == nullptr) wrong_type(node, key, "an array of integers");
      std::vector<int64_t> out;
      for (const toml::node& element : *array) {
        auto v = element.value_exact<int64_t>();
        if (!v || *v <= 0) {
          throw ConfigError(file_, full(key), line_of(element),
                            "expected an array of positive integers");
        }
        out.push_back(*v);
      }
      return out;
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      const toml::array* array = node.as_array();
      if (array == nullptr) wrong_type(node, key, "an array of strings");
      std::vector<std::string> out;
      for (const toml::node& element : *array) {
        auto v = element.value_exact<std::string>();
        if (!v) throw ConfigError(file_, full(key), line_of(element), "expected an array of strings");
        out.push_back(*v);
      }
      return out;
    }
  }

  const toml::table& table_;
  std::string prefix_;
  const std::string& file_;
  std::set<std::string> known_;
};

const toml::table* subtable(const toml::table& root, const char* key, const std::string& file) {
  const toml::node* node = root.get(key);
  if (node == nullptr) return nullptr;
  if (!node->is_table()) {
    throw ConfigError(file, key, line_of(*node), "expected a table ([" + std::string(key) + "])");
  }
  return node->as_table();
}

void check_choice(const std::string& file, const std::string& key, const std::string& value,
                  std::initializer_list<const char*> choices, const toml::table* table) {
  for (const char* c : choices) {
    if (value == c) return;
  }
  int64_t line = 0;
  if (table != nullptr) {
    const auto dot = key.rfind('.');
    if (const toml::node* node = table->get(key.substr(dot + 1))) line = line_of(*node);
  }
  throw ConfigError(file, key, line,
                    fmt::format("'{}' is not one of: {}", value, fmt::join(choices, ", ")));
}

void read_layers(const toml::table& model, train::ModelConfig& out, const std::string& file) {
  const toml::node* node = model.get("layers");
  if (node == nullptr) return;
  const toml::array* layers = node->as_array();
  if (layers == nullptr) throw ConfigError(file, "model.layers", line_of(*node), "expected [[model.layers]] tables");
  int index = 0;
  for (const toml::node& element : *layers) {
    const std::string key = fmt::format("model.layers[{}]", index);
    const toml::table* table = element.as_table();
    if (table == nullptr) throw ConfigError(file, key, line_of(element), "expected a table");
    train::LayerConfig layer;
    layer.line = line_of(element);
    TableReader r(*table, key, file);
    r.read("type", layer.type);
    r.read("name", layer.name);
    r.read("in_features", layer.in_features);
    r.read("out_features", layer.out_features);
    r.read("in_channels", layer.in_channels);
    r.read("out_channels", layer.out_channels);
    r.read("kernel", layer.kernel);
    r.read("stride", layer.stride);
    r.read("padding", layer.padding);
    r.read("bias", layer.bias);
    r.read("p", layer.p);
    r.read("num_embeddings", layer.num_embeddings);
    r.read("embedding_dim", layer.embedding_dim);
    r.finish();
    if (layer.type.empty()) throw ConfigError(file, key + ".type", layer.line, "missing layer type");
    check_choice(file, key + ".type", layer.type,
                 {"linear", "conv2d", "maxpool2d", "avgpool2d", "relu", "sigmoid", "tanh", "gelu",
                  "dropout", "flatten", "batchnorm1d", "batchnorm2d", "embedding"},
                 table);
    if (layer.name.empty()) layer.name = std::to_string(index);
    if (layer.p < 0.0f || layer.p >= 1.0f) {
      throw ConfigError(file, key + ".p", layer.line, fmt::format("dropout p must be in [0, 1), got {}", layer.p));
    }
    out.layers.push_back(std::move(layer));
    ++index;
  }
}

// Sets root[dotted key] = value, creating tables on the way.
void apply_override(toml::table& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("--set", assignment, 0, "expected key=value");
  }
  const std::string key = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  toml::table parsed;
  try {
    parsed = toml::parse("value = " + text);
  } catch (const toml::parse_error&) {
    parsed.insert_or_assign("value", text);
  }
  toml::table* table = &root;
  std::string_view rest = key;
  for (auto dot = rest.find('.'); dot != std::string_view::npos; dot = rest.find('.')) {
    const std::string part(rest.substr(0, dot));
    toml::node* node = table->get(part);
    if (node == nullptr) {
      table->insert(part, toml::table{});
      node = table->get(part);
    }
    rest.remove_prefix(dot + 1);
    if (toml::array* array = node->as_array()) {
      // "model.layers.1.out_features": an index into an array of tables.
      const auto next = rest.find('.');
      const std::string index_text(rest.substr(0, next));
      size_t index = 0;
      try {
        size_t used = 0;
        index = std::stoul(index_text, &used);
        if (used != index_text.size()) throw std::invalid_argument(index_text);
      } catch (const std::exception&) {
        throw ConfigError("--set", key, 0, "'" + part + "' is an array: expected an index, got '" + index_text + "'");
      }
      if (index >= array->size() || next == std::string_view::npos) {
        throw ConfigError("--set", key, 0,
                          fmt::format("'{}' has {} entries; expected {}.<index>.<key>", part, array->size(), part));
      }
      node = array->get(index);
      rest.remove_prefix(next + 1);
    }
    if (!node->is_table()) throw ConfigError("--set", key, 0, "'" + part + "' is not a table");
    table = node->as_table();
  }
  table->insert_or_assign(std::string(rest), *parsed.get("value"));
}

}  // namespace

Slowdown parse_slowdown(const std::string& entry, const std::string& source,
                        const std::string& key) {
  const auto eq = entry.find('=');
  Slowdown out;
  try {
    if (eq == std::string::npos) throw std::invalid_argument(entry);
    size_t used = 0;
    const std::string rank = entry.substr(0, eq);
    if (rank == "all") {
      out.rank = Slowdown::kAllRanks;
    } else {
      out.rank = std::stoll(rank, &used);
      if (used != rank.size() || out.rank < 0) throw std::invalid_argument(rank);
    }
    const std::string factor = entry.substr(eq + 1);
    out.factor = std::stod(factor, &used);
    if (used != factor.size()) throw std::invalid_argument(factor);
  } catch (const std::exception&) {
    throw ConfigError(source, key, 0,
                      fmt::format("'{}' is not RANK=FACTOR (e.g. 3=2.5 or all=4)", entry));
  }
  if (!(out.factor >= 1.0) || !std::isfinite(out.factor)) {
    throw ConfigError(source, key, 0, fmt::format("'{}': need a factor >= 1", entry));
  }
  return out;
}

train::JobConfig parse_job(const std::string& toml_text, const std::string& source_name,
                           const std::vector<std::string>& overrides) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    throw ConfigError(source_name, "(syntax)", static_cast<int64_t>(e.source().begin.line),
                      std::string(e.description()));
  }
  for (const std::string& assignment : overrides) apply_override(root, assignment);

  const std::string& file = source_name;
  train::JobConfig job;
  job.source = source_name;
  {
    TableReader r(root, "", file);
    for (const char* section : {"job", "model", "data", "optimizer", "schedule", "train", "distributed"}) {
      r.allow(section);
    }
    r.finish();
  }
  if (const toml::table* t = subtable(root, "job", file)) {
    TableReader r(*t, "job", file);
    r.read("name", job.name);
    r.read("seed", job.seed);
    r.read("output", job.output);
    r.read("resume", job.resume);
    r.finish();
  }
  if (const toml::table* t = subtable(root, "model", file)) {
    TableReader r(*t, "model", file);
    r.read("input_shape", job.model.input_shape);
    r.allow("layers");
    r.finish();
    read_layers(*t, job.model, file);
  }
  if (const toml::table* t = subtable(root, "data", file)) {
    TableReader r(*t, "data", file);
    r.read("dataset", job.data.dataset);
    r.read("path", job.data.path);
    r.read("test_path", job.data.test_path);
    r.read("label_column", job.data.label_column);
    r.read("train_limit", job.data.train_limit);
    r.read("test_limit", job.data.test_limit);
    r.read("normalize", job.data.normalize);
    r.read("synthetic_samples", job.data.synthetic_samples);
    r.read("synthetic_features", job.data.synthetic_features);
    r.read("synthetic_classes", job.data.synthetic_classes);
    r.read("partition", job.data.partition);
    r.read("classes_per_worker", job.data.classes_per_worker);
    r.read("dirichlet_alpha", job.data.dirichlet_alpha);
    r.read("quantity_sigma", job.data.quantity_sigma);
    data::CtrOptions& ctr = job.data.ctr;
    r.read("ctr_fields", ctr.fields);
    r.read("ctr_vocabulary", ctr.vocabulary);
    r.read("ctr_zipf_exponent", ctr.zipf_exponent);
    r.read("ctr_hash_buckets", ctr.hash_buckets);
    r.read("ctr_train_samples", ctr.train_samples);
    r.read("ctr_test_samples", ctr.test_samples);
    r.read("ctr_weight_stddev", ctr.weight_stddev);
    r.read("ctr_bias", ctr.bias);
    r.read("ctr_seed", ctr.seed);
    r.finish();
    check_choice(file, "data.dataset", job.data.dataset, {"mnist", "csv", "synthetic", "ctr"}, t);
    if (!job.data.partition.empty()) {
      check_choice(file, "data.partition", job.data.partition,
                   {"iid", "label", "dirichlet", "quantity"}, t);
    }
    if (job.data.dataset == "ctr") {
      try {
        data::check_ctr_options(ctr);
      } catch (const UsageError& e) {
        throw ConfigError(file, "data", line_of(*t), e.what());
      }
    }
  }
  if (const toml::table* t = subtable(root, "optimizer", file)) {
    TableReader r(*t, "optimizer", file);
    r.read("type", job.optimizer.type);
    r.read("lr", job.optimizer.lr);
    r.read("momentum", job.optimizer.momentum);
    r.read("dampening", job.optimizer.dampening);
    r.read("nesterov", job.optimizer.nesterov);
    r.read("weight_decay", job.optimizer.weight_decay);
    r.read("beta1", job.optimizer.beta1);
    r.read("beta2", job.optimizer.beta2);
    r.read("eps", job.optimizer.eps);
    r.read("lr_decay", job.optimizer.lr_decay);
    r.read("initial_accumulator_value", job.optimizer.initial_accumulator_value);
    r.finish();
    check_choice(file, "optimizer.type", job.optimizer.type, {"sgd", "adam", "adamw", "adagrad"}, t);
    if (!(job.optimizer.lr > 0.0)) {
      throw ConfigError(file, "optimizer.lr", t->get("lr") ? line_of(*t->get("lr")) : 0,
                        fmt::format("must be positive, got {}", job.optimizer.lr));
    }
  }
  if (const toml::table* t = subtable(root, "schedule", file)) {
    TableReader r(*t, "schedule", file);
    r.read("type", job.schedule.type);
    r.read("warmup_steps", job.schedule.warmup_steps);
    r.read("step_size", job.schedule.step_size);
    r.read("gamma", job.schedule.gamma);
    r.read("eta_min", job.schedule.eta_min);
    r.read("total_steps", job.schedule.total_steps);
    r.finish();
    check_choice(file, "schedule.type", job.schedule.type, {"constant", "step", "cosine"}, t);
  }
  if (const toml::table* t = subtable(root, "train", file)) {
    TableReader r(*t, "train", file);
    r.read("epochs", job.train.epochs);
    r.read("batch_size", job.train.batch_size);
    r.read("eval_batch_size", job.train.eval_batch_size);
    r.read("log_every_steps", job.train.log_every_steps);
    r.read("max_steps", job.train.max_steps);
    r.read("checkpoint_every_steps", job.train.checkpoint_every_steps);
    r.read("checkpoint_every_seconds", job.train.checkpoint_every_seconds);
    r.read("keep_checkpoints", job.train.keep_checkpoints);
    r.read("threads", job.train.threads);
    r.read("drop_last", job.train.drop_last);
    r.read("max_restarts", job.train.max_restarts);
    r.read("class_weights", job.train.class_weights);
    r.read("elastic", job.train.elastic);
    r.read("min_workers", job.train.min_workers);
    r.finish();
    check_choice(file, "train.class_weights", job.train.class_weights, {"none", "balanced"}, t);
    if (job.train.batch_size <= 0) {
      throw ConfigError(file, "train.batch_size", line_of(*t->get("batch_size")), "must be positive");
    }
    if (!(job.train.checkpoint_every_seconds >= 0.0)) {
      throw ConfigError(file, "train.checkpoint_every_seconds",
                        line_of(*t->get("checkpoint_every_seconds")),
                        fmt::format("must be 0 (off) or positive, got {}",
                                    job.train.checkpoint_every_seconds));
    }
  }
  if (const toml::table* t = subtable(root, "distributed", file)) {
    TableReader r(*t, "distributed", file);
    r.read("strategy", job.distributed.strategy);
    r.read("workers", job.distributed.workers);
    r.read("bucket_bytes", job.distributed.bucket_bytes);
    r.read("timeout_ms", job.distributed.timeout_ms);
    r.read("accumulation_steps", job.distributed.accumulation_steps);
    r.read("backend", job.distributed.backend);
    r.read("dynamic_batch", job.distributed.dynamic_batch);
    r.read("rebalance_every", job.distributed.rebalance_every);
    r.read("smoothing", job.distributed.smoothing);
    r.read("min_share", job.distributed.min_share);
    r.read("max_share", job.distributed.max_share);
    r.read("slowdown", job.distributed.slowdown);
    r.read("servers", job.distributed.servers);
    r.read("consistency", job.distributed.consistency);
    r.read("staleness", job.distributed.staleness);
    r.read("backup_workers", job.distributed.backup_workers);
    r.read("heartbeat_timeout_ms", job.distributed.heartbeat_timeout_ms);
    r.finish();
    const auto line = [t](const char* key) { return t->get(key) ? line_of(*t->get(key)) : 0; };
    if (job.distributed.rebalance_every < 1) {
      throw ConfigError(file, "distributed.rebalance_every", line("rebalance_every"),
                        "must be at least 1");
    }
    if (!(job.distributed.smoothing >= 0.0 && job.distributed.smoothing < 1.0)) {
      throw ConfigError(file, "distributed.smoothing", line("smoothing"),
                        fmt::format("must be in [0, 1), got {}", job.distributed.smoothing));
    }
    if (!(job.distributed.min_share >= 0.0 && job.distributed.min_share <= job.distributed.max_share &&
          job.distributed.max_share <= 1.0)) {
      throw ConfigError(file, "distributed.min_share", line("min_share"),
                        fmt::format("need 0 <= min_share <= max_share <= 1, got {} and {}",
                                    job.distributed.min_share, job.distributed.max_share));
    }
    for (const std::string& entry : job.distributed.slowdown) {
      parse_slowdown(entry, file, "distributed.slowdown");
    }
    check_choice(file, "distributed.strategy", job.distributed.strategy,
                 {"local", "mirrored", "allreduce", "ps"}, t);
    if (job.distributed.servers < 1) {
      throw ConfigError(file, "distributed.servers", line("servers"),
                        fmt::format("must be at least 1, got {}", job.distributed.servers));
    }
    check_choice(file, "distributed.consistency", job.distributed.consistency,
                 {"sync", "async", "ssp"}, t);
    if (job.distributed.backup_workers > 0 && job.distributed.consistency != "sync") {
      throw ConfigError(file, "distributed.backup_workers", line("backup_workers"),
                        fmt::format("backup workers drop late pushes of a synchronous step; "
                                    "consistency '{}' has no step to drop them from",
                                    job.distributed.consistency));
    }
    if (job.distributed.heartbeat_timeout_ms < 100) {
      throw ConfigError(file, "distributed.heartbeat_timeout_ms", line("heartbeat_timeout_ms"),
                        fmt::format("must be at least 100 (ms), got {}",
                                    job.distributed.heartbeat_timeout_ms));
    }
    if (job.distributed.workers < 1) {
      throw ConfigError(file, "distributed.workers", line_of(*t->get("workers")), "must be at least 1");
    }
    if (job.distributed.accumulation_steps < 1) {
      throw ConfigError(file, "distributed.accumulation_steps", line_of(*t->get("accumulation_steps")),
                        "must be at least 1");
    }
    check_choice(file, "distributed.backend", job.distributed.backend, {"native", "mpi"}, t);
  }
  job.schedule.lr = job.optimizer.lr;
  if (job.model.layers.empty()) throw ConfigError(file, "model.layers", 0, "the model has no layers");
  if (job.model.input_shape.empty()) throw ConfigError(file, "model.input_shape", 0, "missing (e.g. [1, 28, 28])");
  return job;
}

train::JobConfig read_job_file(const std::string& path, const std::vector<std::string>& overrides) {
  // Only a regular file of at most 16 MiB: /dev/zero or a FIFO fails at once.
  std::string text;
  try {
    text = io::read_regular_file(path, uint64_t{16} << 20, "job file");
  } catch (const DataError& e) {
    throw ConfigError(e.what());  // a wrong job file path is a configuration error (exit 2)
  }
  return parse_job(text, path, overrides);
}

}  // namespace dtrain::cli
