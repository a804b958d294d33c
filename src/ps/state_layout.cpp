#include "ps/state_layout.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include "core/error.h"
#include "ps/shard_store.h"

namespace dtrain::ps {

namespace {

const std::string kDenseOptimizer = "dense.optimizer.";

// The rows of `parts` (each [n_i, ...]) stacked along dimension 0.
Tensor concat_rows(const std::vector<Tensor>& parts) {
  Shape shape = parts.front().shape();
  shape[0] = 0;
  for (const Tensor& p : parts) shape[0] += p.size(0);
  Tensor out = Tensor::empty(shape);
  int64_t at = 0;
  for (const Tensor& p : parts) {
    std::memcpy(out.data() + at, p.data(), static_cast<size_t>(p.numel()) * sizeof(float));
    at += p.numel();
  }
  return out;
}

// Rows `rows` of `t` ([n, ...]), in that order.
Tensor take_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  Shape shape = t.shape();
  shape[0] = static_cast<int64_t>(rows.size());
  Tensor out = Tensor::empty(shape);
  const int64_t width = t.size(0) == 0 ? 0 : t.numel() / t.size(0);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(out.data() + static_cast<int64_t>(i) * width, t.data() + rows[i] * width,
                static_cast<size_t>(width) * sizeof(float));
  }
  return out;
}

// "state.<i>.<buffer>" -> "<buffer>".
std::string buffer_of(const std::string& key) {
  const size_t second_dot = key.find('.', key.find('.') + 1);
  return second_dot == std::string::npos ? key : key.substr(second_dot + 1);
}

int64_t parse_step(const std::string& text, int server) {
  int64_t value = 0;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), value);
  if (r.ec != std::errc() || r.ptr != text.data() + text.size() || value < 0) {
    throw CommError(server, "ps get_state",
                    fmt::format("server {} sent step '{}', not a count", server, text));
  }
  return value;
}

// Per table: the servers' rows ("<table>.<field>" -> per server)
// concatenated, then sorted by key, into `sparse`.
void assemble_sparse(const std::vector<SparseTableSpec>& tables,
                     const std::map<std::string, std::vector<Tensor>>& sparse_parts,
                     StateDict& sparse) {
  for (const SparseTableSpec& table : tables) {
    const std::string prefix = table.name + ".";
    auto keys_it = sparse_parts.find(prefix + "keys");
    if (keys_it == sparse_parts.end()) continue;
    const Tensor keys = concat_rows(keys_it->second);
    const int64_t n = keys.size(0);
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::vector<uint64_t> key_values(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      order[static_cast<size_t>(i)] = i;
      key_values[static_cast<size_t>(i)] = limbs_to_key(keys.data() + i * 4);
    }
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return key_values[static_cast<size_t>(a)] < key_values[static_cast<size_t>(b)];
    });
    for (const auto& [name, parts] : sparse_parts) {
      if (name.rfind(prefix, 0) != 0) continue;
      const Tensor joined = concat_rows(parts);
      if (joined.size(0) != n) {
        throw CommError(
            -1, "ps get_state",
            fmt::format("sparse '{}' has {} rows for {} keys", name, joined.size(0), n));
      }
      sparse.insert(name, take_rows(joined, order));
    }
  }
}

// The rows of every table of `sparse`, routed to their servers by key
// into `out` (one StateDict per server).
void split_sparse(const ShardPlan& plan, const std::vector<SparseTableSpec>& tables,
                  const StateDict& sparse, std::vector<StateDict>& out) {
  const auto servers = static_cast<size_t>(plan.num_servers());
  for (size_t t = 0; t < tables.size(); ++t) {
    const std::string prefix = tables[t].name + ".";
    const StateDict table = sparse.sub(prefix);
    if (!table.contains("keys")) {
      throw UsageError(
          fmt::format("ps load_state: sparse table '{}' has no '{}keys'", tables[t].name, prefix));
    }
    const Tensor& keys = table.at("keys");
    if (keys.dim() != 2 || keys.size(1) != 4) {
      throw UsageError(fmt::format("ps load_state: '{}keys' has shape {}; expected (n, 4)", prefix,
                                   shape_str(keys.shape())));
    }
    const int64_t n = keys.size(0);
    std::vector<std::vector<int64_t>> rows(servers);
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t key = limbs_to_key(keys.data() + i * 4);
      rows[static_cast<size_t>(sparse_server_of(static_cast<uint32_t>(t), key, plan.num_servers()))]
          .push_back(i);
    }
    for (const auto& [name, tensor] : table) {
      if (tensor.dim() < 1 || tensor.size(0) != n) {
        throw UsageError(fmt::format("ps load_state: '{}{}' has shape {} for {} keys", prefix, name,
                                     shape_str(tensor.shape()), n));
      }
      for (size_t s = 0; s < servers; ++s) {
        out[s].insert("sparse." + prefix + name, take_rows(tensor, rows[s]));
      }
    }
  }
}

}  // namespace

PsState assemble_state(const ShardPlan& plan, const std::vector<SparseTableSpec>& tables,
                       const std::vector<StateDict>& server_states,
                       const std::vector<uint64_t>& versions) {
  DTRAIN_CHECK(static_cast<int>(server_states.size()) == plan.num_servers() &&
                   versions.size() == server_states.size(),
               "{} states and {} versions for {} servers", server_states.size(), versions.size(),
               plan.num_servers());
  PsState state;
  state.version = *std::min_element(versions.begin(), versions.end());
  const auto& specs = plan.tensors();
  auto zeros = [&] {
    std::vector<Tensor> out;
    for (const DenseSpec& spec : specs) out.push_back(Tensor::zeros(spec.shape));
    return out;
  };
  std::vector<Tensor> values = zeros();
  std::map<std::string, std::vector<Tensor>> buffers;  // buffer -> per tensor
  std::string kind;
  std::string lr;
  int64_t step = 0;
  std::map<std::string, std::vector<Tensor>> sparse_parts;  // "<table>.<field>" -> per server
  for (int s = 0; s < plan.num_servers(); ++s) {
    const StateDict& part = server_states[static_cast<size_t>(s)];
    auto copy_in = [&](const std::string& name, const Tensor& from, std::vector<Tensor>& to) {
      if (from.numel() != plan.range_numel(s)) {
        throw CommError(s, "ps get_state",
                        fmt::format("server {} sent {} floats for '{}'; its range holds {}", s,
                                    from.numel(), name, plan.range_numel(s)));
      }
      for (const ShardSlice& slice : plan.slices(s)) {
        std::memcpy(to[slice.tensor].data() + slice.offset, from.data() + slice.shard_offset,
                    static_cast<size_t>(slice.count) * sizeof(float));
      }
    };
    if (!part.contains("dense.values")) {
      throw CommError(s, "ps get_state", fmt::format("server {} sent no 'dense.values'", s));
    }
    copy_in("dense.values", part.at("dense.values"), values);
    const StateDict optimizer = part.sub(kDenseOptimizer);
    const auto& meta = optimizer.metadata();
    if (meta.count("optimizer")) kind = meta.at("optimizer");
    if (meta.count("lr")) lr = meta.at("lr");
    if (meta.count("state.0.step")) step = std::max(step, parse_step(meta.at("state.0.step"), s));
    for (const auto& [name, tensor] : optimizer) {
      auto [it, added] = buffers.try_emplace(buffer_of(name));
      if (added) it->second = zeros();
      copy_in(kDenseOptimizer + name, tensor, it->second);
    }
    for (const auto& [name, tensor] : part.sub("sparse.")) sparse_parts[name].push_back(tensor);
  }

  for (size_t i = 0; i < specs.size(); ++i) state.dense.insert(specs[i].name, values[i]);
  state.optimizer.metadata()["optimizer"] = kind;
  state.optimizer.metadata()["lr"] = lr;
  state.optimizer.metadata()["num_parameters"] = std::to_string(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    state.optimizer.metadata()[fmt::format("state.{}.step", i)] = std::to_string(step);
    for (const auto& [buffer, tensors] : buffers) {
      state.optimizer.insert(fmt::format("state.{}.{}", i, buffer), tensors[i]);
    }
  }

  assemble_sparse(tables, sparse_parts, state.sparse);
  return state;
}

std::vector<StateDict> split_state(const ShardPlan& plan,
                                   const std::vector<SparseTableSpec>& tables,
                                   const PsState& state) {
  const auto& specs = plan.tensors();
  // Every named tensor of `dict` in init order, shapes checked.
  auto per_tensor = [&](const StateDict& dict, auto key_of) {
    std::vector<Tensor> out;
    for (size_t i = 0; i < specs.size(); ++i) {
      const std::string key = key_of(i);
      if (!dict.contains(key)) throw UsageError(fmt::format("ps load_state: '{}' is missing", key));
      const Tensor& t = dict.at(key);
      if (t.shape() != specs[i].shape) {
        throw UsageError(fmt::format("ps load_state: '{}' has shape {}, tensor {} '{}' is {}", key,
                                     shape_str(t.shape()), i, specs[i].name,
                                     shape_str(specs[i].shape)));
      }
      out.push_back(t);
    }
    return out;
  };
  const std::vector<Tensor> values =
      per_tensor(state.dense, [&](size_t i) { return specs[i].name; });
  std::set<std::string> buffer_names;
  for (const auto& [name, tensor] : state.optimizer) buffer_names.insert(buffer_of(name));
  std::map<std::string, std::vector<Tensor>> buffers;
  for (const std::string& b : buffer_names) {
    buffers[b] =
        per_tensor(state.optimizer, [&](size_t i) { return fmt::format("state.{}.{}", i, b); });
  }
  const auto& meta = state.optimizer.metadata();
  auto meta_or = [&](const std::string& key, const std::string& fallback) {
    auto it = meta.find(key);
    return it == meta.end() ? fallback : it->second;
  };

  const auto servers = static_cast<size_t>(plan.num_servers());
  std::vector<StateDict> out(servers);
  for (int s = 0; s < plan.num_servers(); ++s) {
    StateDict& part = out[static_cast<size_t>(s)];
    part.metadata()["version"] = std::to_string(state.version);
    auto slice_of = [&](const std::vector<Tensor>& full) {
      Tensor shard = Tensor::empty({plan.range_numel(s)});
      for (const ShardSlice& slice : plan.slices(s)) {
        std::memcpy(shard.data() + slice.shard_offset, full[slice.tensor].data() + slice.offset,
                    static_cast<size_t>(slice.count) * sizeof(float));
      }
      return shard;
    };
    part.insert("dense.values", slice_of(values));
    if (meta.count("optimizer")) {
      part.metadata()[kDenseOptimizer + "optimizer"] = meta.at("optimizer");
      part.metadata()[kDenseOptimizer + "lr"] = meta_or("lr", "0");
      part.metadata()[kDenseOptimizer + "num_parameters"] = "1";
      part.metadata()[kDenseOptimizer + "state.0.step"] = meta_or("state.0.step", "0");
      for (const auto& [b, tensors] : buffers) {
        part.insert(kDenseOptimizer + "state.0." + b, slice_of(tensors));
      }
    }
  }

  split_sparse(plan, tables, state.sparse, out);
  return out;
}

PsState state_from_checkpoint(const StateDict& model, const StateDict& optimizer,
                              const std::vector<std::string>& dense_names, uint64_t min_version) {
  PsState state;
  state.version = min_version;
  if (const auto it = optimizer.metadata().find(kCheckpointVersionKey);
      it != optimizer.metadata().end()) {
    uint64_t version = 0;
    const std::string& text = it->second;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), version);
    if (error != std::errc() || end != text.data() + text.size()) {
      throw UsageError(fmt::format("ps state: metadata '{}' is '{}', not a version number",
                                   kCheckpointVersionKey, text));
    }
    state.version = std::max(version, min_version);
  }
  for (const std::string& name : dense_names) {
    if (!model.contains(name)) {
      throw UsageError(fmt::format("ps state: the model holds no tensor '{}'", name));
    }
    state.dense.insert(name, model.at(name));
  }
  const std::string sparse_prefix = kCheckpointSparsePrefix;
  const std::string compress_prefix = kCheckpointCompressPrefix;
  for (const auto& [name, tensor] : optimizer) {
    if (name.rfind(sparse_prefix, 0) != 0 && name.rfind(compress_prefix, 0) != 0) {
      state.optimizer.insert(name, tensor);
    }
  }
  for (const auto& [key, value] : optimizer.metadata()) {
    if (key.rfind("ps.", 0) != 0 && key.rfind(compress_prefix, 0) != 0) {
      state.optimizer.metadata()[key] = value;
    }
  }
  state.sparse = optimizer.sub(sparse_prefix);
  return state;
}

}  // namespace dtrain::ps
