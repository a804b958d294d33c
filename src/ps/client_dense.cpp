// Client's dense data calls: pull(), push() and push_and_pull(), and the
// requests and replies they share (client.h holds the contract, client_impl.h
// the private state; exchange() and its recovery live in client.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/deadline.h"
#include "core/error.h"
#include "core/trace.h"
#include "ps/client.h"
#include "ps/client_impl.h"
#include "ps/compressed_push.h"

namespace dtrain::ps {

std::vector<std::pair<int, Message>> Client::Impl::pull_requests(uint64_t min_version) const {
  std::vector<std::pair<int, Message>> requests;
  for (int s = 0; s < num_servers(); ++s) {
    Message m;
    m.kind = Kind::kPull;
    m.min_version = min_version;
    requests.emplace_back(s, std::move(m));
  }
  return requests;
}

uint64_t Client::Impl::take_pull(std::vector<Message>& replies, const std::vector<Tensor>& out) {
  uint64_t version = replies[0].version;
  uint64_t min_clock = replies[0].min_clock;
  for (int s = 0; s < num_servers(); ++s) {
    Message& r = replies[static_cast<size_t>(s)];
    version = std::min(version, r.version);
    min_clock = std::min(min_clock, r.min_clock);
    take_range(s, r, out);
  }
  last_version_ = version;
  last_min_clock_ = min_clock;
  last_totals_ = replies[0].totals;
  return version;
}

void Client::Impl::take_range(int s, Message& r, const std::vector<Tensor>& out) {
  const size_t floats = r.float_bytes.size() / sizeof(float);
  if (static_cast<int64_t>(floats) != plan_.range_numel(s)) {
    throw CommError(s, "ps pull",
                    fmt::format("server {} replied with {} floats; its range holds {}", s, floats,
                                plan_.range_numel(s)));
  }
  // Straight from the received message into the parameters: the pull's
  // one copy on this side.
  for (const ShardSlice& slice : plan_.slices(s)) {
    std::memcpy(out[slice.tensor].data() + slice.offset,
                r.float_bytes.data() + slice.shard_offset * sizeof(float),
                static_cast<size_t>(slice.count) * sizeof(float));
  }
  std::optional<uint64_t>& pushed = shm_push_version_[static_cast<size_t>(s)];
  if (r.shm.present &&
      !shm_[static_cast<size_t>(s)]->stable(ShmSegment::Region::kPull, r.shm.sequence)) {
    throw CommError(s, "ps pull",
                    fmt::format("server {} rewrote this worker's shared-memory range while it "
                                "was copied (a second answer to the same pull)",
                                s));
  }
  if (pushed && r.version > *pushed) pushed.reset();  // the server no longer views it
  values_[static_cast<size_t>(s)] = Impl::Range{std::move(r.payload_owner), r.float_bytes};
  open_pushes_[static_cast<size_t>(s)].clear();
}

void Client::Impl::create_segments() {
  shm_.assign(static_cast<size_t>(num_servers()), nullptr);
  shm_push_version_.assign(static_cast<size_t>(num_servers()), std::nullopt);
  if (!options_.private_ipc || !options_.shm) return;
  for (int s = 0; s < num_servers(); ++s) {
    const std::string folder = shm_folder(options_.server_endpoints[static_cast<size_t>(s)]);
    if (folder.empty()) continue;  // an inproc link (a hosted server) has no kernel copy
    try {
      shm_[static_cast<size_t>(s)] = std::make_shared<ShmSegment>(ShmSegment::create(
          folder, static_cast<uint32_t>(options_.worker), static_cast<uint32_t>(s),
          static_cast<uint64_t>(plan_.range_numel(s))));
    } catch (const CommError& e) {
      logger_.warn(
          "ps worker {}: no shared memory for server {}'s range ({}); its floats go "
          "through the socket",
          options_.worker, s, e.what());
      continue;
    }
    logger_.info(
        "ps worker {}: dense floats with server {} through shared memory ({})", options_.worker, s,
        ShmSegment::path(folder, static_cast<uint32_t>(options_.worker), static_cast<uint32_t>(s)));
  }
}

void Client::Impl::push_through_shm(int server, Message& m) {
  const auto s = static_cast<size_t>(server);
  if (m.kind != Kind::kPush || m.shm.present || m.float_parts.empty() || s >= shm_.size() ||
      !shm_[s] || shm_push_version_[s]) {
    return;
  }
  m.shm = write_floats(*shm_[s], ShmSegment::Region::kPush, m.float_parts);
  m.float_parts.clear();
  shm_push_version_[s] = m.version;
}

void Client::Impl::resolve_shm_reply(int server, Message& m) const {
  if (!m.shm.present) return;
  const auto s = static_cast<size_t>(server);
  if (s >= shm_.size() || !shm_[s]) {
    throw DataError(fmt::format(
        "reply from server {} names shared memory; this worker has no segment for it", server));
  }
  m.float_bytes = view_floats(*shm_[s], ShmSegment::Region::kPull, m.shm);
  m.payload_owner = shm_[s];
}

uint64_t Client::pull(const std::vector<Tensor>& out, uint64_t min_version) {
  Impl& d = *impl_;
  d.require_init("pull");
  d.check_dense(out, "pull");
  auto replies =
      d.exchange(d.pull_requests(min_version), "pull", fmt::format("version >= {}", min_version));
  return d.take_pull(replies, out);
}

std::vector<std::pair<int, Message>> Client::Impl::push_requests(const std::vector<Tensor>& grads,
                                                                 const DensePush& push) {
  require_init("push");
  check_dense(grads, "push");
  PushCompressor* compressor =
      push.compression.compressed ? &this->compressor("compressed push") : nullptr;
  if (push.samples < 0) {
    throw UsageError(fmt::format("ps push: samples is {}; must be >= 0", push.samples));
  }
  if (push.correct < 0 || push.correct > push.samples) {
    throw UsageError(fmt::format("ps push: correct is {}; must be in [0, samples = {}]",
                                 push.correct, push.samples));
  }
  if (!std::isfinite(push.compute_s) || push.compute_s < 0.0) {
    throw UsageError(
        fmt::format("ps push: compute_s is {}; must be a finite number >= 0", push.compute_s));
  }
  std::vector<std::pair<int, Message>> requests;
  for (int s = 0; s < num_servers(); ++s) {
    Message m;
    m.kind = Kind::kPush;
    m.version = push.version;
    m.samples = push.samples;
    m.lr = push.lr;
    m.loss_sum = push.loss_sum;
    m.correct = push.correct;
    m.compute_s = push.compute_s;
    if (compressor != nullptr) {
      m.kind = Kind::kPushCompressed;
      m.pieces = compressor->encode(s, grads, push.compression.step, options_.worker);
      requests.emplace_back(s, std::move(m));
      continue;
    }
    // Encoded straight from the gradients (the slices lie in range order).
    for (const ShardSlice& slice : plan_.slices(s)) {
      m.float_parts.push_back(float_bytes(grads[slice.tensor].data() + slice.offset, slice.count));
    }
    requests.emplace_back(s, std::move(m));
  }
  return requests;
}

namespace {

PushResult push_result(const std::vector<Message>& replies) {
  PushResult result;
  result.version = replies[0].version;
  for (const Message& r : replies) {
    (r.status == ReplyStatus::kDropped ? result.servers_dropped : result.servers_applied) += 1;
    result.version = std::min(result.version, r.version);
  }
  return result;
}

std::string push_awaited(uint64_t version) {
  return fmt::format("the push of version {} to be taken", version);
}

}  // namespace

PushResult Client::push(const std::vector<Tensor>& grads, int64_t samples, float lr,
                        uint64_t version, double loss_sum, int64_t correct, double compute_s,
                        PushCompression compression) {
  Impl& d = *impl_;
  const DensePush push{samples, lr, version, loss_sum, correct, compute_s, compression};
  return push_result(d.exchange(d.push_requests(grads, push), "push", push_awaited(version)));
}

uint64_t Client::push_and_pull(const std::vector<Tensor>& grads, const DensePush& push,
                               const std::vector<Tensor>& out, uint64_t min_version,
                               PushResult* result) {
  Impl& d = *impl_;
  TraceSink* trace = d.options_.trace;
  TraceSpan sending(trace, "push", "ps");
  auto pushes = d.push_requests(grads, push);
  d.check_dense(out, "pull");
  Impl::Call push_call = d.start(std::move(pushes), "push", push_awaited(push.version));
  Impl::Call pull_call =
      d.start(d.pull_requests(min_version), "pull", fmt::format("version >= {}", min_version),
              /*drain_monitors=*/false);
  sending.end();
  TraceSpan waiting(trace, "pull", "ps");
  TraceSpan push_reply(trace, "push_reply", "ps");
  const PushResult pushed = push_result(d.finish(push_call));
  push_reply.end();
  if (result != nullptr) *result = pushed;
  // A server that lost the push (a broken connection, a replacement that
  // asked for a re-join) may have lost the pull behind it too, if it was
  // written to the broken connection: ask again, now that the push is in. A
  // pull still queued in ZeroMQ's pipe reaches the replacement instead and
  // is answered kRejoin, which the pull's half recovers from; either way the
  // same request id may be answered twice, and the second reply is discarded
  // as a late one.
  for (int s : push_call.resent) {
    if (pull_call.pending.count(s) != 0)
      d.send(s, pull_call.requests[pull_call.pending.at(s)].second);
  }
  pull_call.deadline = Deadline::after(d.options_.timeout);
  auto replies = d.finish(pull_call);
  TraceSpan copy(trace, "pull_copy", "ps");
  return d.take_pull(replies, out);
}

}  // namespace dtrain::ps
