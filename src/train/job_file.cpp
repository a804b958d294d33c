#include "train/job_file.h"

#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "fl/fl_config.h"
#include "io/file_system.h"
#include "io/toml_table.h"
#include "obs/trace_writer.h"
#include "strategy/registry.h"

namespace dtrain::train {

namespace {

constexpr const char* kSections[] = {"job",      "model",    "data",        "optimizer",
                                     "schedule", "train",    "distributed", "compression",
                                     "fl",       "security", "privacy"};

// Reads [security] (docs/security.md).
void read_security(io::TomlTable& t, SecurityConfig& s) {
  t.get("encrypt", s.encrypt);
  t.get("key_file", s.key_file);
  t.finish();
}

// Reads [job].
void read_job(io::TomlTable& t, JobConfig& job) {
  t.get("name", job.name);
  t.get("seed", job.seed);
  t.get("output", job.output);
  t.get("resume", job.resume);
  t.finish();
  if (job.output.empty()) {
    throw t.error("output",
                  "must name a folder (it receives the checkpoints, the metrics and "
                  "the final weights)");
  }
}

void read_layer(const toml::table& table, const std::string& key, const std::string& file,
                int index, LayerConfig& layer) {
  io::TomlTable r(&table, key, file);
  layer.line = io::line_of(table);
  r.get("type", layer.type);
  r.get("name", layer.name);
  r.get("in_features", layer.in_features);
  r.get("out_features", layer.out_features);
  r.get("in_channels", layer.in_channels);
  r.get("out_channels", layer.out_channels);
  r.get("kernel", layer.kernel);
  r.get("stride", layer.stride);
  r.get("padding", layer.padding);
  r.get("bias", layer.bias);
  r.get("p", layer.p);
  r.get("num_embeddings", layer.num_embeddings);
  r.get("embedding_dim", layer.embedding_dim);
  r.finish();
  if (layer.type.empty()) throw ConfigError(file, key + ".type", layer.line, "missing layer type");
  check_choice(r.lines(), "type", layer.type,
               {"linear", "conv2d", "maxpool2d", "avgpool2d", "relu", "sigmoid", "tanh", "gelu",
                "dropout", "flatten", "batchnorm1d", "batchnorm2d", "embedding"});
  if (layer.name.empty()) layer.name = std::to_string(index);
  if (layer.p < 0.0f || layer.p >= 1.0f) {
    throw r.error("p", fmt::format("dropout p must be in [0, 1), got {}", layer.p));
  }
}

// Reads [model] and its [[model.layers]].
void read_model(io::TomlTable& t, JobConfig& job) {
  t.get("input_shape", job.model.input_shape);
  const toml::array* layers = t.array_of_tables("layers");
  t.finish();
  if (layers == nullptr) return;
  int index = 0;
  for (const toml::node& element : *layers) {
    const std::string key = fmt::format("model.layers[{}]", index);
    const toml::table* table = element.as_table();
    if (table == nullptr)
      throw ConfigError(job.source, key, io::line_of(element), "expected a table");
    LayerConfig layer;
    read_layer(*table, key, job.source, index, layer);
    job.model.layers.push_back(std::move(layer));
    ++index;
  }
}

// Reads [data].
void read_data(io::TomlTable& t, DataConfig& d) {
  t.get("dataset", d.dataset);
  t.get("path", d.path);
  t.get("test_path", d.test_path);
  t.get("label_column", d.label_column);
  t.get("train_limit", d.train_limit);
  t.get("test_limit", d.test_limit);
  t.get("normalize", d.normalize);
  t.get("synthetic_samples", d.synthetic_samples);
  t.get("synthetic_features", d.synthetic_features);
  t.get("synthetic_classes", d.synthetic_classes);
  t.get("partition", d.partition);
  t.get("classes_per_worker", d.classes_per_worker);
  t.get("dirichlet_alpha", d.dirichlet_alpha);
  t.get("quantity_sigma", d.quantity_sigma);
  t.get("shards_per_worker", d.shards_per_worker);
  data::CtrOptions& ctr = d.ctr;
  t.get("ctr_fields", ctr.fields);
  t.get("ctr_vocabulary", ctr.vocabulary);
  t.get("ctr_zipf_exponent", ctr.zipf_exponent);
  t.get("ctr_hash_buckets", ctr.hash_buckets);
  t.get("ctr_train_samples", ctr.train_samples);
  t.get("ctr_test_samples", ctr.test_samples);
  t.get("ctr_weight_stddev", ctr.weight_stddev);
  t.get("ctr_bias", ctr.bias);
  t.get("ctr_seed", ctr.seed);
  t.finish();
  check_choice(t.lines(), "dataset", d.dataset, {"mnist", "csv", "synthetic", "ctr"});
  if (!d.partition.empty()) {
    check_choice(t.lines(), "partition", d.partition,
                 {"iid", "label", "dirichlet", "quantity", "shards"});
  }
  if (d.shards_per_worker < 1) {
    throw t.lines().error("shards_per_worker",
                          fmt::format("must be >= 1, got {}", d.shards_per_worker));
  }
  if (d.dataset == "ctr") {
    try {
      data::check_ctr_options(ctr);
    } catch (const UsageError& e) {
      throw ConfigError(t.lines().file(), "data", t.lines().line(""), e.what());
    }
  }
}

// Reads [optimizer].
void read_optimizer(io::TomlTable& t, optim::OptimizerConfig& o) {
  t.get("type", o.type);
  t.get("lr", o.lr);
  t.get("momentum", o.momentum);
  t.get("dampening", o.dampening);
  t.get("nesterov", o.nesterov);
  t.get("weight_decay", o.weight_decay);
  t.get("beta1", o.beta1);
  t.get("beta2", o.beta2);
  t.get("eps", o.eps);
  t.get("lr_decay", o.lr_decay);
  t.get("initial_accumulator_value", o.initial_accumulator_value);
  t.finish();
  check_choice(t.lines(), "type", o.type, {"sgd", "adam", "adamw", "adagrad"});
  if (!(o.lr > 0.0f)) throw t.error("lr", fmt::format("must be positive, got {}", o.lr));
  if (!std::isfinite(o.lr)) throw t.error("lr", fmt::format("must be finite, got {}", o.lr));
}

// Reads [schedule].
void read_schedule(io::TomlTable& t, optim::LrScheduleConfig& s) {
  t.get("type", s.type);
  t.get("warmup_steps", s.warmup_steps);
  t.get("step_size", s.step_size);
  t.get("gamma", s.gamma);
  t.get("eta_min", s.eta_min);
  t.get("total_steps", s.total_steps);
  t.finish();
  check_choice(t.lines(), "type", s.type, {"constant", "step", "cosine"});
}

// Reads [train].
void read_train(io::TomlTable& t, TrainConfig& c) {
  t.get("epochs", c.epochs);
  t.get("batch_size", c.batch_size);
  t.get("eval_batch_size", c.eval_batch_size);
  t.get("log_every_steps", c.log_every_steps);
  t.get("max_steps", c.max_steps);
  t.get("checkpoint_every_steps", c.checkpoint_every_steps);
  t.get("checkpoint_every_seconds", c.checkpoint_every_seconds);
  t.get("keep_checkpoints", c.keep_checkpoints);
  t.get("threads", c.threads);
  t.get("drop_last", c.drop_last);
  t.get("max_restarts", c.max_restarts);
  t.get("class_weights", c.class_weights);
  t.get("elastic", c.elastic);
  t.get("min_workers", c.min_workers);
  t.get("tensorboard", c.tensorboard);
  t.get("histogram_every_steps", c.histogram_every_steps);
  t.get("trace", c.trace);
  t.get("trace_steps", c.trace_steps);
  t.finish();
  try {
    obs::parse_trace_steps(c.trace_steps);
  } catch (const UsageError& e) {
    throw t.error("trace_steps", e.what());
  }
  check_choice(t.lines(), "class_weights", c.class_weights, {"none", "balanced"});
  if (c.batch_size <= 0) throw t.error("batch_size", "must be positive");
  if (c.eval_batch_size <= 0) throw t.error("eval_batch_size", "must be positive");
  if (!(c.checkpoint_every_seconds >= 0.0) || !std::isfinite(c.checkpoint_every_seconds)) {
    throw t.error("checkpoint_every_seconds",
                  fmt::format("must be 0 (off) or positive, got {}", c.checkpoint_every_seconds));
  }
}

// Reads [privacy] (train/dp_sgd.h, docs/privacy.md).
void read_privacy(io::TomlTable& t, PrivacyConfig& p) {
  t.get("enabled", p.enabled);
  t.get("noise_multiplier", p.noise_multiplier);
  t.get("max_grad_norm", p.max_grad_norm);
  t.get("delta", p.delta);
  t.get("target_epsilon", p.target_epsilon);
  t.finish();
  if (!(p.noise_multiplier >= 0.0) || !std::isfinite(p.noise_multiplier)) {
    throw t.error("noise_multiplier",
                  fmt::format("must be 0 (solve it from target_epsilon) or positive, got {}",
                              p.noise_multiplier));
  }
  if (!(p.max_grad_norm > 0.0) || !std::isfinite(p.max_grad_norm)) {
    throw t.error("max_grad_norm", fmt::format("must be positive, got {}", p.max_grad_norm));
  }
  if (!(p.delta > 0.0 && p.delta < 1.0)) {
    throw t.error("delta", fmt::format("must be in (0, 1), got {}", p.delta));
  }
  if (!(p.target_epsilon >= 0.0) || !std::isfinite(p.target_epsilon)) {
    throw t.error("target_epsilon",
                  fmt::format("must be 0 (no budget) or positive, got {}", p.target_epsilon));
  }
  if (p.enabled && p.noise_multiplier == 0.0 && p.target_epsilon == 0.0) {
    throw t.error("enabled",
                  "DP-SGD needs privacy.noise_multiplier or privacy.target_epsilon (to solve the "
                  "noise multiplier from)");
  }
}

// DP-SGD needs per-sample gradients: layers that mix the samples of a batch
// are refused, as is what changes the per-sample loss or the sampling.
void check_privacy(const JobConfig& job) {
  if (!job.privacy.enabled) return;
  for (size_t i = 0; i < job.model.layers.size(); ++i) {
    const LayerConfig& layer = job.model.layers[i];
    if (layer.type.starts_with("batchnorm")) {
      throw job.lines.error(
          "privacy.enabled",
          fmt::format("DP-SGD cannot train model layer {} ('{}', {}): batch normalisation mixes "
                      "the samples of a batch, so it has no per-sample gradient; remove it",
                      i, layer.name.empty() ? std::to_string(i) : layer.name, layer.type));
    }
  }
  if (job.train.class_weights != "none") {
    throw job.lines.error("privacy.enabled",
                          "DP-SGD clips each sample's own loss gradient; train.class_weights "
                          "reweights samples by the batch and is not supported with it");
  }
  if (!job.data.partition.empty()) {
    throw job.lines.error("privacy.enabled",
                          "DP-SGD samples the whole training set (Poisson sampling); "
                          "data.partition is not supported with it");
  }
}

// Reads [compression] (strategy/compression.h, docs/compression.md).
void read_compression(io::TomlTable& t, CompressionConfig& c) {
  strategy::CompressionSettings& s = c.settings;
  compress::Options& o = s.codec;
  std::string type = "none";
  int64_t min_size = static_cast<int64_t>(o.min_size);
  int64_t qsgd_bucket = static_cast<int64_t>(o.qsgd_bucket);
  t.get("type", type);
  t.get("density", o.density);
  t.get("levels", o.levels);
  t.get("qsgd_bucket", qsgd_bucket);
  t.get("rank", o.rank);
  t.get("error_feedback", o.error_feedback);
  t.get("min_size", min_size);
  t.get("momentum", o.momentum);
  t.get("warmup_steps", o.warmup_steps);
  t.get("min_compression_rate", o.min_compression_rate);
  t.get("start_step", s.start_step);
  t.get("local_steps", s.local_steps);
  t.get("guard", c.guard.enabled);
  t.get("guard_window", c.guard.window);
  t.get("guard_margin", c.guard.margin);
  t.get("guard_snapshot_every", c.guard.snapshot_every);
  t.get("guard_hold_steps", c.guard.hold_steps);
  t.finish();
  const std::optional<compress::Method> method = compress::parse_method(type);
  if (!method) {
    throw t.error("type", fmt::format("unknown compressor '{}'; one of: {}", type,
                                      fmt::join(compress::method_names(), ", ")));
  }
  o.method = *method;
  if (!(o.density > 0.0 && o.density <= 1.0)) {
    throw t.error("density", fmt::format("must be in (0, 1], got {}", o.density));
  }
  if (o.levels < 1) throw t.error("levels", fmt::format("must be at least 1, got {}", o.levels));
  if (o.rank < 1) throw t.error("rank", fmt::format("must be at least 1, got {}", o.rank));
  if (min_size < 0) throw t.error("min_size", fmt::format("must be >= 0, got {}", min_size));
  o.min_size = static_cast<size_t>(min_size);
  if (qsgd_bucket < 0 || qsgd_bucket > int64_t{0xffffffff}) {
    throw t.error("qsgd_bucket",
                  fmt::format("must be in [0, 2^32) (0: the whole tensor), got {}", qsgd_bucket));
  }
  o.qsgd_bucket = static_cast<size_t>(qsgd_bucket);
  if (!(o.momentum >= 0.0 && o.momentum < 1.0)) {
    throw t.error("momentum", fmt::format("must be in [0, 1), got {}", o.momentum));
  }
  if (o.warmup_steps < 0) throw t.error("warmup_steps", "must be >= 0");
  if (!(o.min_compression_rate >= 1.0) || !std::isfinite(o.min_compression_rate)) {
    throw t.error("min_compression_rate",
                  fmt::format("must be at least 1, got {}", o.min_compression_rate));
  }
  if (s.start_step < 0) throw t.error("start_step", "must be >= 0");
  if (s.local_steps < 1) {
    throw t.error("local_steps", fmt::format("must be at least 1, got {}", s.local_steps));
  }
  if (s.compresses() && s.local_sgd()) {
    throw t.error("local_steps",
                  "local SGD (local_steps > 1) averages models and does not combine with a "
                  "compressor: set type = \"none\" or local_steps = 1");
  }
  const GuardConfig& g = c.guard;
  if (g.window < 1) throw t.error("guard_window", "must be at least 1");
  if (!(g.margin > 0.0) || !std::isfinite(g.margin)) {
    throw t.error("guard_margin", fmt::format("must be positive, got {}", g.margin));
  }
  if (g.snapshot_every < 1) throw t.error("guard_snapshot_every", "must be at least 1");
  if (g.hold_steps < 1) throw t.error("guard_hold_steps", "must be at least 1");
  if (g.enabled && !s.active()) {
    throw t.error("guard", "watches a compressed run: set compression.type (or local_steps)");
  }
  if (g.enabled && s.local_sgd()) {
    throw t.error("guard",
                  "does not watch local SGD yet (its updates between averagings see one "
                  "worker's loss only)");
  }
}

// Reads the generic keys of [distributed]; the strategies' own keys (and
// their deprecated flat aliases here) are read by read_strategies().
void read_distributed(io::TomlTable& t, DistributedConfig& d) {
  t.get("strategy", d.strategy);
  t.get("workers", d.workers);
  t.get("timeout_ms", d.timeout_ms);
  t.get("heartbeat_timeout_ms", d.heartbeat_timeout_ms);
  t.get("dynamic_batch", d.dynamic_batch);
  t.get("rebalance_every", d.rebalance_every);
  t.get("smoothing", d.smoothing);
  t.get("min_share", d.min_share);
  t.get("max_share", d.max_share);
  t.get("slowdown", d.slowdown);
  t.get("link_mbps", d.link_mbps);
  t.get("link_latency_ms", d.link_latency_ms);
  t.get("slow_link", d.slow_link);
  if (!(d.link_mbps >= 0.0) || !std::isfinite(d.link_mbps)) {
    throw t.error("link_mbps", fmt::format("must be 0 (off) or positive, got {}", d.link_mbps));
  }
  if (!(d.link_latency_ms >= 0.0) || !std::isfinite(d.link_latency_ms)) {
    throw t.error("link_latency_ms", fmt::format("must be >= 0, got {}", d.link_latency_ms));
  }
  if (d.link_latency_ms > 0.0 && d.link_mbps == 0.0) {
    throw t.error("link_latency_ms", "needs distributed.link_mbps (the link's bandwidth)");
  }
  if (d.rebalance_every < 1) throw t.error("rebalance_every", "must be at least 1");
  if (!(d.smoothing >= 0.0 && d.smoothing < 1.0)) {
    throw t.error("smoothing", fmt::format("must be in [0, 1), got {}", d.smoothing));
  }
  if (!(d.min_share >= 0.0 && d.min_share <= d.max_share && d.max_share <= 1.0)) {
    throw t.error("min_share", fmt::format("need 0 <= min_share <= max_share <= 1, got {} and {}",
                                           d.min_share, d.max_share));
  }
  for (const std::string& entry : d.slowdown) {
    parse_slowdown(entry, t.lines().file(), "distributed.slowdown");
  }
  for (const std::string& entry : d.slow_link) {
    parse_slow_link(entry, t.lines().file(), "distributed.slow_link");
  }
  if (!d.slow_link.empty() && d.link_mbps == 0.0) {
    throw t.error("slow_link", "needs distributed.link_mbps (the bandwidth it slows down)");
  }
  if (!d.strategy.empty()) strategy::make_strategy_spec(d.strategy, t.lines(), "strategy");
  if (d.heartbeat_timeout_ms < 100) {
    throw t.error("heartbeat_timeout_ms",
                  fmt::format("must be at least 100 (ms), got {}", d.heartbeat_timeout_ms));
  }
  if (d.timeout_ms < 1) throw t.error("timeout_ms", "must be at least 1 (ms)");
  if (d.workers < 1) throw t.error("workers", "must be at least 1");
}

// Every registered strategy reads its table [distributed.<name>], with the
// flat keys of [distributed] as deprecated aliases.
void read_strategies(io::TomlTable& distributed, JobFile& out) {
  const std::string& file = out.job.source;
  for (const std::string& name : strategy::strategy_names()) {
    const toml::table* own = distributed.table(name);
    io::TomlTable own_table(own, "distributed." + name, file);
    AliasedTable aliased(own_table, distributed, out.notes);
    auto spec = strategy::make_strategy_spec(name, distributed.lines(), "strategy");
    spec->read_options(aliased);
    own_table.finish();
    out.job.distributed.strategies[name] = std::move(spec);
  }
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

SlowLink parse_slow_link(const std::string& entry, const std::string& source,
                         const std::string& key) {
  const auto eq = entry.find('=');
  SlowLink out;
  try {
    if (eq == std::string::npos) throw std::invalid_argument(entry);
    size_t used = 0;
    const std::string rank = entry.substr(0, eq);
    out.rank = std::stoll(rank, &used);
    if (used != rank.size() || out.rank < 0) throw std::invalid_argument(rank);
    const std::string factor = entry.substr(eq + 1);
    out.factor = std::stod(factor, &used);
    if (used != factor.size()) throw std::invalid_argument(factor);
  } catch (const std::exception&) {
    throw ConfigError(source, key, 0, fmt::format("'{}' is not RANK=FACTOR (e.g. 3=10)", entry));
  }
  if (!(out.factor >= 1.0) || !std::isfinite(out.factor)) {
    throw ConfigError(source, key, 0, fmt::format("'{}': need a factor >= 1", entry));
  }
  return out;
}

JobFile parse_job(const std::string& toml_text, const std::string& source_name,
                  const std::vector<std::string>& overrides) {
  const toml::table root = io::parse_toml(toml_text, source_name, overrides);
  JobFile out;
  JobConfig& job = out.job;
  job.source = source_name;
  job.lines = KeyLines(source_name, "", 0);
  io::TomlTable top(&root, "", source_name);
  const auto section = [&](const char* name, auto&& read) {
    io::TomlTable t(top.table(name), name, source_name);
    read(t);
    job.lines.merge(t.lines());
  };
  section("job", [&](io::TomlTable& t) { read_job(t, job); });
  section("model", [&](io::TomlTable& t) { read_model(t, job); });
  section("data", [&](io::TomlTable& t) { read_data(t, job.data); });
  section("optimizer", [&](io::TomlTable& t) { read_optimizer(t, job.optimizer); });
  section("schedule", [&](io::TomlTable& t) { read_schedule(t, job.schedule); });
  section("train", [&](io::TomlTable& t) { read_train(t, job.train); });
  section("compression", [&](io::TomlTable& t) { read_compression(t, job.compression); });
  section("security", [&](io::TomlTable& t) { read_security(t, job.security); });
  section("privacy", [&](io::TomlTable& t) { read_privacy(t, job.privacy); });
  section("fl", [&](io::TomlTable& t) {
    job.fl = fl::read_fl_config(t);
    t.finish();
  });
  section("distributed", [&](io::TomlTable& t) {
    read_distributed(t, job.distributed);
    read_strategies(t, out);
    t.finish();
  });
  for (const char* name : kSections) top.allow(name);
  top.finish();
  if (job.model.layers.empty()) {
    throw job.lines.error("model.layers", "the model has no layers");
  }
  if (job.model.input_shape.empty()) {
    throw job.lines.error("model.input_shape", "missing (e.g. [1, 28, 28])");
  }
  check_privacy(job);
  return out;
}

JobFile read_job_file(const std::string& path, const std::vector<std::string>& overrides) {
  // Only a regular file of at most 16 MiB: /dev/zero or a FIFO fails at once.
  std::string text;
  try {
    text = io::read_regular_file(path, uint64_t{16} << 20, "job file");
  } catch (const DataError& e) {
    throw ConfigError(e.what());  // a wrong job file path is a configuration error (exit 2)
  }
  return parse_job(text, path, overrides);
}

}  // namespace dtrain::train
