// Server::Impl's update requests (server_impl.h): dense pushes with the row
// pushes riding with them and the pull behind them (a CTR step's one request
// per server, Client::push_step), row pushes and row pulls on their own.
// A push's parts are all checked before any is taken, and taken in the order
// separate requests would be (rows, then the dense gradient, then the pull),
// so the updates, the replication log and the replies are those of the
// separate requests.
#include <cstring>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/finite.h"
#include "ps/server_impl.h"

namespace dtrain::ps {

using std::chrono::milliseconds;

namespace {

// Refuses an update holding NaN or Inf from anyone: one such value would
// poison every parameter it touches. (A non-finite learning rate does not
// decode at all: decode_message.)
void check_finite_update(const Message& m) {
  if (m.floats_finite) return;  // decode_message checked them
  std::vector<float> values = m.floats;
  if (!m.float_bytes.empty()) {  // a viewed push: copied for the message only
    values.resize(m.float_count());
    std::memcpy(values.data(), m.float_bytes.data(), m.float_bytes.size());
  }
  const size_t i = dtrain::first_non_finite(values).value_or(0);
  throw Refusal(fmt::format("{} from worker {}: value {} of {} is {}; nothing applied",
                            to_string(m.kind), m.worker, i, values.size(), values[i]));
}

}  // namespace

void Server::Impl::resolve_shm_push(Message& m) {
  if (!m.shm.present) return;
  const std::string folder =
      options_.private_ipc && options_.shm ? shm_folder(options_.bind_endpoint) : std::string();
  if (folder.empty()) {
    throw Refusal(fmt::format(
        "push from worker {} names shared memory, but this server's link has none (private ipc "
        "and shm are needed)",
        m.worker));
  }
  shm_segments_.resize(static_cast<size_t>(options_.num_workers));
  std::shared_ptr<ShmSegment>& segment = shm_segments_[m.worker];
  try {
    if (!segment || segment->id() != m.shm.segment_id) {
      segment.reset();
      segment = std::make_shared<ShmSegment>(ShmSegment::open(
          folder, m.worker, static_cast<uint32_t>(options_.server), m.shm.segment_id));
      logger_.info("ps server {}: worker {}'s dense floats through shared memory ({})",
                   options_.server, m.worker,
                   ShmSegment::path(folder, m.worker, static_cast<uint32_t>(options_.server)));
    }
    m.float_bytes = view_floats(*segment, ShmSegment::Region::kPush, m.shm);
  } catch (const DataError& e) {
    throw Refusal(fmt::format("push from worker {}: {}", m.worker, e.what()));
  }
  m.payload_owner = segment;
  m.floats_finite = floats_finite_bytes(m.float_bytes);
}

ShmSegment* Server::Impl::shm_segment(uint32_t worker) const {
  if (worker >= shm_segments_.size() || !shm_segments_[worker] || !dense_) return nullptr;
  ShmSegment* segment = shm_segments_[worker].get();
  return segment->capacity() == static_cast<uint64_t>(dense_->numel()) ? segment : nullptr;
}

std::optional<Admission> Server::Impl::take_push(Message& m) {
  if (!initialised_) throw Refusal("push before init: the server holds no parameters yet");
  resolve_shm_push(m);
  std::vector<SparseTable*> tables;
  tables.reserve(m.rows.size());
  for (Message& rows : m.rows) {
    tables.push_back(&table_for(rows, 1));
    check_finite_update(rows);
  }
  for (const Message& rows : m.prefetch) table_for(rows, 0);
  check_finite_update(m);
  if (static_cast<int64_t>(m.float_count()) != dense_->numel()) {
    throw Refusal(fmt::format("gradient has {} floats; server {} holds {} (range [{}, {}))",
                              m.float_count(), options_.server, dense_->numel(),
                              plan_.range_begin(options_.server),
                              plan_.range_end(options_.server)));
  }
  if (repeated_push(m)) return std::nullopt;
  if (options_.replacement && options_.consistency == Consistency::kSync) {
    consistency_.follow(m.version, fmt::format("worker {}'s push", m.worker));
  }
  // The rows as their own requests ahead of the push would be taken. In
  // sync a refusal of the rows (a stale version) comes before anything is
  // held, as the dense admission below would refuse the same version.
  for (size_t k = 0; k < m.rows.size(); ++k) {
    Message& rows = m.rows[k];
    if (consistency_.admit_rows(m.worker, rows) == Admission::kApplyNow) {
      tables[k]->apply(rows.keys, rows.floats, rows.lr);
    }
  }
  const Admission admission = consistency_.admit_push(m.worker, m);
  last_push_id_[m.worker] = m.request_id;
  if (admission == Admission::kApplyNow && m.samples > 0) {
    if (m.float_bytes.empty()) {
      dense_->apply(m.floats, m.lr);
    } else {
      dense_->apply(m.float_bytes, m.lr);
    }
  }
  return admission;
}

void Server::Impl::on_push(const std::string& identity, Message& m) {
  const std::optional<Admission> admission = take_push(m);
  const ReplyStatus status =
      admission == Admission::kDropped ? ReplyStatus::kDropped : ReplyStatus::kOk;
  if (m.with_pull) {
    close_version();  // this push may complete the version the pull waits for
    pull_after_push(identity, m, status);
    return;
  }
  Message r;
  r.reply_to = m.kind;
  r.request_id = m.request_id;
  r.status = status;
  r.version = consistency_.version();
  if (admission == Admission::kHeld) {
    defer_reply(identity, m.worker, std::move(r));
  } else {
    reply(identity, m.worker, std::move(r));
  }
  if (admission) close_version();
}

void Server::Impl::pull_after_push(const std::string& identity, const Message& m,
                                   ReplyStatus status) {
  if (pull_ready(m.worker, m.min_version)) {
    answer_pull(identity, m.worker, m.request_id, m.kind, status, m.prefetch);
    return;
  }
  parked_.push_back(Parked{identity, m.worker, m.request_id, m.min_version,
                           Clock::now() + milliseconds(m.wait_ms), m.kind, status, m.prefetch});
}

SparseTable& Server::Impl::table_for(const Message& m, size_t floats_per_key) {
  if (!initialised_) {
    throw Refusal(fmt::format("{} before init: the server knows no tables yet", to_string(m.kind)));
  }
  if (m.table >= tables_.size()) {
    throw Refusal(fmt::format("unknown table {}; the job has {} tables", m.table, tables_.size()));
  }
  SparseTable& table = tables_[m.table];
  const size_t dim = static_cast<size_t>(table.spec().dim);
  if (m.floats.size() != m.keys.size() * floats_per_key * dim) {
    throw Refusal(fmt::format("table '{}': {} floats for {} keys of dim {}", table.spec().name,
                              m.floats.size(), m.keys.size(), dim));
  }
  const size_t stray = first_key_not_on(m.table, m.keys, options_.server, options_.num_servers);
  if (stray < m.keys.size()) {
    const uint64_t key = m.keys[stray];
    throw Refusal(fmt::format("table '{}': key {} belongs to server {}, not {}", table.spec().name,
                              key, sparse_server_of(m.table, key, options_.num_servers),
                              options_.server));
  }
  return table;
}

Message Server::Impl::row_reply(const Message& m) {
  SparseTable& table = table_for(m, 0);
  Message r;
  r.reply_to = Kind::kPullRows;
  r.request_id = m.request_id;
  r.version = consistency_.version();
  const size_t rows_before = table.rows();
  r.float_parts = table.row_bytes(m.keys);  // encoded straight from the table by reply()
  // Rows created by a read change the block layout: the backups replay it.
  if (backups_ && table.rows() != rows_before) backups_->record_touch(m.table, m.keys);
  return r;
}

void Server::Impl::on_pull_rows(const std::string& identity, const Message& m) {
  reply(identity, m.worker, row_reply(m));
}

void Server::Impl::on_push_rows(const std::string& identity, Message& m) {
  SparseTable& table = table_for(m, 1);
  check_finite_update(m);
  Message r;
  r.reply_to = Kind::kPushRows;
  r.request_id = m.request_id;
  if (repeated_push(m)) {
    r.version = consistency_.version();
    reply(identity, m.worker, std::move(r));
    return;
  }
  if (options_.replacement && options_.consistency == Consistency::kSync) {
    consistency_.follow(m.version, fmt::format("worker {}'s row push", m.worker));
  }
  const Admission admission = consistency_.admit_rows(m.worker, m);
  last_push_id_[m.worker] = m.request_id;
  if (admission == Admission::kDropped) r.status = ReplyStatus::kDropped;
  r.version = consistency_.version();
  // Answered before the apply (checked above, it cannot fail): the worker's
  // next request travels while the rows are applied, and this thread takes
  // no request before they are, so nobody sees them unapplied.
  reply(identity, m.worker, std::move(r));
  if (admission == Admission::kApplyNow) table.apply(m.keys, m.floats, m.lr);
}

}  // namespace dtrain::ps
