#include "ps/replica_store.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <utility>

#include "core/error.h"

namespace dtrain::ps {

ReplicaStore::ReplicaStore(int server, uint64_t seed, optim::OptimizerConfig optimizer)
    : server_(server), seed_(seed), optimizer_(std::move(optimizer)) {}

ReplicaAck ReplicaStore::ack(uint32_t primary, ReplicaAck::Status status, std::string error) const {
  ReplicaAck a;
  a.status = status;
  a.backup = static_cast<uint32_t>(server_);
  a.primary = primary;
  a.term = term(primary);
  auto it = copies_.find(primary);
  a.version = it == copies_.end() ? 0 : it->second.version;
  a.error = std::move(error);
  return a;
}

void ReplicaStore::check_ops(const Copy& copy, const ReplicaUpdate& update) {
  for (size_t i = 0; i < update.ops.size(); ++i) {
    const ReplicaOp& op = update.ops[i];
    if (op.kind == ReplicaOp::Kind::kDenseApply) {
      if (static_cast<int64_t>(op.floats.size()) != copy.dense->numel()) {
        throw UsageError(fmt::format("op {}: dense gradient of {} floats, the copy holds {}", i,
                                     op.floats.size(), copy.dense->numel()));
      }
      continue;
    }
    if (op.table >= copy.tables.size()) {
      throw UsageError(
          fmt::format("op {}: table {}, the copy has {} tables", i, op.table, copy.tables.size()));
    }
    const auto dim = static_cast<size_t>(copy.tables[op.table].spec().dim);
    const size_t expected = op.kind == ReplicaOp::Kind::kRowsApply ? op.keys.size() * dim : 0;
    if (op.floats.size() != expected) {
      throw UsageError(fmt::format("op {}: {} floats for {} rows of dim {}", i, op.floats.size(),
                                   op.keys.size(), dim));
    }
  }
}

uint64_t ReplicaStore::newest_seen(uint32_t primary) const {
  const auto it = newest_seen_.find(primary);
  return it == newest_seen_.end() ? 0 : it->second;
}

std::optional<ReplicaAck> ReplicaStore::older_term(uint32_t primary, uint64_t term,
                                                   const char* what) {
  uint64_t& known = terms_[primary];
  if (term >= known) {
    known = term;
    return std::nullopt;
  }
  return ack(primary, ReplicaAck::Status::kError,
             fmt::format("server {} refused server {}'s {} of term {}: the range is at term {} "
                         "(taken over)",
                         server_, primary, what, term, known));
}

void ReplicaStore::raise_term(uint32_t primary, uint64_t term) {
  uint64_t& known = terms_[primary];
  known = std::max(known, term);
}

uint64_t ReplicaStore::term(uint32_t primary) const {
  const auto it = terms_.find(primary);
  return it == terms_.end() ? 0 : it->second;
}

ReplicaAck ReplicaStore::apply(const ReplicaUpdate& update) {
  if (auto refused = older_term(update.primary, update.term, "update")) return *refused;
  uint64_t& seen = newest_seen_[update.primary];
  seen = std::max(seen, update.new_version);
  auto it = copies_.find(update.primary);
  if (it == copies_.end()) {
    return ack(
        update.primary, ReplicaAck::Status::kNeedState,
        fmt::format("server {} holds no copy of server {}'s range yet", server_, update.primary));
  }
  Copy& copy = it->second;
  if (copy.version >= update.new_version) return ack(update.primary, ReplicaAck::Status::kOk);
  if (copy.version != update.base_version) {
    return ack(update.primary, ReplicaAck::Status::kNeedState,
               fmt::format("server {}'s copy of server {}'s range is at version {}; the update "
                           "starts at {}",
                           server_, update.primary, copy.version, update.base_version));
  }
  try {
    check_ops(copy, update);
  } catch (const UsageError& e) {
    return ack(update.primary, ReplicaAck::Status::kError, e.what());
  }
  std::vector<float> scratch;
  for (const ReplicaOp& op : update.ops) {
    switch (op.kind) {
      case ReplicaOp::Kind::kDenseApply:
        copy.dense->apply(op.floats, op.lr);
        break;
      case ReplicaOp::Kind::kRowsTouch: {
        SparseTable& table = copy.tables[op.table];
        scratch.resize(op.keys.size() * static_cast<size_t>(table.spec().dim));
        table.read_rows(op.keys, scratch);
        break;
      }
      case ReplicaOp::Kind::kRowsApply:
        copy.tables[op.table].apply(op.keys, op.floats, op.lr);
        break;
    }
  }
  copy.version = update.new_version;
  return ack(update.primary, ReplicaAck::Status::kOk);
}

ReplicaAck ReplicaStore::load(const ReplicaState& state) {
  if (auto refused = older_term(state.primary, state.term, "state")) return *refused;
  uint64_t& seen = newest_seen_[state.primary];
  seen = std::max(seen, state.version);
  try {
    if (!state.state.contains("dense.values")) {
      throw UsageError("the state has no 'dense.values'");
    }
    const Tensor& values = state.state.at("dense.values");
    Copy copy;
    copy.version = state.version;
    copy.dense.emplace(values.span(), optimizer_);
    copy.dense->import_state(state.state);
    for (size_t i = 0; i < state.tables.size(); ++i) {
      copy.tables.emplace_back(state.tables[i], static_cast<uint32_t>(i), seed_, optimizer_);
      copy.tables.back().import_state(state.state);
    }
    copies_.insert_or_assign(state.primary, std::move(copy));
  } catch (const Error& e) {
    return ack(state.primary, ReplicaAck::Status::kError,
               fmt::format("server {} cannot load server {}'s state at version {}: {}", server_,
                           state.primary, state.version, e.what()));
  }
  return ack(state.primary, ReplicaAck::Status::kOk);
}

std::optional<uint64_t> ReplicaStore::version(uint32_t primary) const {
  auto it = copies_.find(primary);
  if (it == copies_.end()) return std::nullopt;
  return it->second.version;
}

std::optional<ReplicaState> ReplicaStore::state(uint32_t primary) const {
  auto it = copies_.find(primary);
  if (it == copies_.end()) return std::nullopt;
  ReplicaState out;
  out.term = term(primary);
  out.primary = primary;
  out.version = it->second.version;
  for (const SparseTable& t : it->second.tables) out.tables.push_back(t.spec());
  out.state = state_dict(primary);
  return out;
}

StateDict ReplicaStore::state_dict(uint32_t primary) const {
  StateDict out;
  auto it = copies_.find(primary);
  if (it == copies_.end()) return out;
  out.metadata()["version"] = std::to_string(it->second.version);
  it->second.dense->export_state(out);
  for (const SparseTable& t : it->second.tables) t.export_state(out);
  return out;
}

}  // namespace dtrain::ps
