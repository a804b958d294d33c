#include <algorithm>
#include <charconv>
#include <set>

#include "core/error.h"
#include "ps/server_impl.h"
#include "ps/state_layout.h"

namespace dtrain::ps {

void Server::Impl::check_same_job(const ShardPlan& plan,
                                  const std::vector<SparseTableSpec>& tables) const {
  const auto& have = plan_.tensors();
  if (have.size() != plan.tensors().size()) {
    throw Refusal(fmt::format("init lists {} dense tensors; the job was initialised with {}",
                              plan.tensors().size(), have.size()));
  }
  for (size_t i = 0; i < have.size(); ++i) {
    const DenseSpec& got = plan.tensors()[i];
    if (got.name != have[i].name || got.shape != have[i].shape) {
      throw Refusal(fmt::format("dense tensor {} is '{}' {}; the job was initialised with '{}' {}",
                                i, got.name, shape_str(got.shape), have[i].name,
                                shape_str(have[i].shape)));
    }
  }
  if (tables.size() != table_specs_.size()) {
    throw Refusal(fmt::format("init lists {} tables; the job was initialised with {}",
                              tables.size(), table_specs_.size()));
  }
  for (size_t i = 0; i < table_specs_.size(); ++i) {
    if (tables[i].name != table_specs_[i].name || tables[i].dim != table_specs_[i].dim) {
      throw Refusal(fmt::format("table {} is '{}' dim {}; the job was initialised with '{}' dim {}",
                                i, tables[i].name, tables[i].dim, table_specs_[i].name,
                                table_specs_[i].dim));
    }
  }
}

void Server::Impl::on_init(const std::string& identity, Message& m) {
  std::vector<DenseSpec> specs = m.dense;
  ShardPlan plan(std::move(specs), options_.num_servers);  // UsageError on bad specs
  std::set<std::string> names;
  for (const SparseTableSpec& t : m.tables) {
    if (t.name.empty() || !names.insert(t.name).second) {
      throw Refusal(fmt::format("table name '{}' is empty or repeated", t.name));
    }
  }
  const int64_t expected = plan.range_numel(options_.server);
  if (static_cast<int64_t>(m.floats.size()) != expected) {
    throw Refusal(fmt::format("init carries {} values; server {} holds [{}, {}) = {} floats",
                              m.floats.size(), options_.server, plan.range_begin(options_.server),
                              plan.range_end(options_.server), expected));
  }
  if (initialised_) {
    check_same_job(plan, m.tables);
  } else {
    plan_ = std::move(plan);
    table_specs_ = m.tables;
    dense_.emplace(m.floats, options_.optimizer);
    for (size_t i = 0; i < table_specs_.size(); ++i) {
      tables_.emplace_back(table_specs_[i], static_cast<uint32_t>(i), options_.seed,
                           options_.optimizer);
    }
    initialised_ = true;
    if (backups_) {
      backups_->set_range(fmt::format("server {}'s range (dense [{}, {}) and its sparse rows)",
                                      options_.server, plan_.range_begin(options_.server),
                                      plan_.range_end(options_.server)));
      backups_->invalidate();
    }
    if (!options_.replacement) {
      logger_.info(
          "ps server {}: initialised by worker {}: {} dense tensors, {} floats here, {} tables",
          options_.server, m.worker, plan_.tensors().size(), expected, tables_.size());
    } else if (inherited_ && take_inherited(m.worker)) {
      // From the live replica: nothing lost.
    } else if (!options_.restore || !restore_shard(m.worker)) {
      logger_.warn(
          "ps server {}: replacement serving {:.3f} s after its start with worker {}'s last "
          "pulled parameters and fresh optimizer state (no checkpoint restored)",
          options_.server, std::chrono::duration<double>(Clock::now() - started_).count(),
          m.worker);
    }
  }
  if (options_.replacement) {
    consistency_.follow(m.version, fmt::format("worker {}'s init", m.worker));
  }
  consistency_.join(m.worker);
  joined_[m.worker] = true;
  last_push_id_[m.worker] = 0;
  // A (re)started worker may have a new segment: opened again at its next push.
  if (m.worker < shm_segments_.size()) shm_segments_[m.worker].reset();
  Message r;
  r.reply_to = Kind::kInit;
  r.request_id = m.request_id;
  r.version = consistency_.version();
  r.clock = options_.consistency == Consistency::kSync ? consistency_.version()
                                                       : consistency_.clock(m.worker);
  reply(identity, m.worker, std::move(r));
}

bool Server::Impl::restore_shard(uint32_t worker) {
  const ServerRestore& source = *options_.restore;
  std::vector<std::string> names;
  for (const DenseSpec& spec : plan_.tensors()) names.push_back(spec.name);
  try {
    const PsState state = state_from_checkpoint(source.model, source.optimizer, names, 0);
    const std::vector<StateDict> parts = split_state(plan_, table_specs_, state);
    const StateDict& part = parts[static_cast<size_t>(options_.server)];
    // The dense values come from the init (the worker's last pulled copy,
    // newer than any checkpoint); the checkpoint gives the rest.
    const Tensor& values = part.at("dense.values");
    const std::span<const float> pulled = dense_->values();
    if (values.numel() != static_cast<int64_t>(pulled.size())) {
      throw Refusal(fmt::format("the checkpoint holds {} dense floats for this server, the init {}",
                                values.numel(), pulled.size()));
    }
    std::copy(pulled.begin(), pulled.end(), values.data());
    import_shard(part, state.version);
    logger_.warn(
        "ps server {}: replacement restored its shard from {} (version {}; dense values "
        "from worker {}'s last pulled copy, optimizer state and embedding rows from the "
        "checkpoint) and serves {:.3f} s after its start",
        options_.server, source.origin, state.version, worker,
        std::chrono::duration<double>(Clock::now() - started_).count());
    return true;
  } catch (const std::exception& e) {
    logger_.error("ps server {}: cannot restore from {}: {}", options_.server, source.origin,
                  e.what());
    return false;
  }
}

void Server::Impl::on_set_state(const std::string& identity, const Message& m) {
  if (!initialised_) throw Refusal("set_state before init: the dense layout is not known yet");
  const auto& meta = m.state.metadata();
  auto it = meta.find("version");
  uint64_t version = 0;
  if (it == meta.end() ||
      std::from_chars(it->second.data(), it->second.data() + it->second.size(), version).ec !=
          std::errc()) {
    throw Refusal("set_state: metadata 'version' is missing or not a number");
  }
  import_shard(m.state, version);
  logger_.info("ps server {}: state loaded by worker {}; version {}", options_.server, m.worker,
               version);
  Message r;
  r.reply_to = Kind::kSetState;
  r.request_id = m.request_id;
  r.version = version;
  reply(identity, m.worker, std::move(r));
}

void Server::Impl::import_shard(const StateDict& state, uint64_t version) {
  if (!state.contains("dense.values")) throw Refusal("set_state: 'dense.values' is missing");
  // Import into fresh objects; swap only when everything fits.
  DenseShard dense(dense_->values(), options_.optimizer);
  dense.import_state(state);
  std::vector<SparseTable> tables;
  for (size_t i = 0; i < table_specs_.size(); ++i) {
    tables.emplace_back(table_specs_[i], static_cast<uint32_t>(i), options_.seed,
                        options_.optimizer);
    if (!state.contains("sparse." + table_specs_[i].name + ".keys")) {
      throw Refusal(fmt::format("set_state: table '{}' is missing", table_specs_[i].name));
    }
    tables.back().import_state(state);
  }
  dense_.emplace(std::move(dense));
  tables_ = std::move(tables);
  consistency_.reset(version);
  if (backups_) backups_->invalidate();
}

StateDict Server::Impl::state_dict() const {
  StateDict out;
  out.metadata()["version"] = std::to_string(consistency_.version());
  if (!initialised_) return out;
  dense_->export_state(out);
  for (const SparseTable& t : tables_) t.export_state(out);
  return out;
}

ServerStats Server::Impl::stats() const {
  ServerStats s = counters_;
  s.frames_dropped = socket_->dropped();
  s.server = options_.server;
  s.initialised = initialised_;
  consistency_.fill(s);
  s.parked_pulls = parked_.size();
  s.sparse_rows = 0;
  for (const SparseTable& t : tables_) s.sparse_rows += t.rows();
  return s;
}

}  // namespace dtrain::ps
