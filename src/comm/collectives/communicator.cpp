#include "comm/collectives/communicator.h"

#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>

#include "comm/collectives/collective_tree.h"
#include "comm/collectives/halving_doubling.h"
#include "comm/collectives/recursive_doubling.h"
#include "comm/collectives/ring_collectives.h"
#include "comm/collectives/sparse_collectives.h"
#include "comm/transport/group_transport.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Identifies this host and boot: equal keys mean shared memory is shared.
uint64_t host_key() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::string identity = host;
  std::ifstream boot_id("/proc/sys/kernel/random/boot_id");
  std::string boot;
  if (boot_id >> boot) identity += "/" + boot;
  uint64_t key = 0;
  for (const char c : identity) key = splitmix64(key ^ static_cast<unsigned char>(c));
  return key;
}

size_t chunk_elements(size_t chunk_bytes) {
  return std::max<size_t>(1, chunk_bytes / sizeof(float));
}
size_t chunk_elements(const CommunicatorOptions& options) {
  return chunk_elements(options.chunk_bytes);
}

// The ring's window in chunks of `chunk_bytes`.
size_t window_chunks(const CommunicatorOptions& options, size_t chunk_bytes) {
  return std::max<size_t>(1, options.ring_window_bytes / chunk_bytes);
}
size_t window_chunks(const CommunicatorOptions& options) {
  return window_chunks(options, options.chunk_bytes);
}

}  // namespace

void Work::wait(Deadline deadline) const {
  if (!done_.valid()) throw UsageError("Work::wait on a Work that holds no operation");
  if (deadline.is_never()) {
    done_.wait();
  } else if (done_.wait_until(deadline.at()) != std::future_status::ready) {
    throw TimeoutError(-1, "Work::wait", deadline.remaining(), "an asynchronous collective");
  }
  done_.get();
}

bool Work::is_completed() const {
  return done_.valid() && done_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

Communicator::Communicator(Transport& transport, CommunicatorOptions options)
    : transport_(transport), options_(std::move(options)) {
  start();
}

Communicator::Communicator(std::unique_ptr<Transport> transport, CommunicatorOptions options)
    : owned_transport_(std::move(transport)),
      transport_(*owned_transport_),
      options_(std::move(options)) {
  start();
}

void Communicator::start() {
  if (options_.chunk_bytes < sizeof(float)) {
    throw UsageError(
        fmt::format("Communicator: chunk_bytes {} is below one float", options_.chunk_bytes));
  }
  set_up_shm();
  listen_to_transport();
  worker_ = std::jthread([this](std::stop_token stop) { worker_loop(std::move(stop)); });
}

void Communicator::listen_to_transport() {
  // A transport that fails (a silent or dead peer) fails the shared-memory
  // waits on the same peers at once, naming the culprit.
  if (shm_ == nullptr) return;
  transport_.set_failure_listener([shm = shm_.get()](int culprit, const std::string& reason) {
    shm->abandon(culprit, reason);
  });
}

Communicator::~Communicator() {
  if (shm_ != nullptr) transport_.set_failure_listener({});
  worker_.request_stop();
  if (worker_.joinable()) worker_.join();
}

void Communicator::set_up_shm() {
  if (!options_.shm_allreduce || options_.job_id.empty() || size() == 1) return;
  // Every rank learns every rank's host key; all equal means one host. A
  // rank behind an emulated slow link sends 0, which keeps every rank off
  // shared memory (nothing escapes the limiter).
  ByteWriter mine(sizeof(uint64_t));
  mine.write_u64(transport_.link_shaped() ? 0 : host_key());
  std::vector<std::byte> gathered(static_cast<size_t>(size()) * sizeof(uint64_t));
  const std::vector<size_t> counts(static_cast<size_t>(size()), sizeof(uint64_t));
  run_collective(make_op(OpKind::kHostCheck, gathered.size(), ReduceOp::kSum, -1, Dtype::kBytes),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   allgatherv_bytes(mine.bytes(), gathered, counts, desc, deadline);
                 });
  ByteReader reader(gathered, "host check");
  const std::vector<uint64_t> keys =
      reader.read_u64_array(static_cast<size_t>(size()), "host keys");
  if (keys[0] != 0 &&
      std::all_of(keys.begin(), keys.end(), [&](uint64_t k) { return k == keys[0]; })) {
    ShmAllreduceOptions shm_options;
    shm_options.job_id = fmt::format("{}-g{:x}", options_.job_id, options_.group_id);
    shm_options.capacity_bytes = options_.shm_capacity_bytes;
    shm_ = std::make_unique<ShmAllreduce>(rank(), size(), std::move(shm_options),
                                          Deadline::after(options_.timeout));
  }
}

OpDescriptor Communicator::make_op(OpKind kind, uint64_t count, ReduceOp reduce, int root,
                                   Dtype dtype) {
  OpDescriptor desc;
  desc.kind = kind;
  desc.reduce = reduce;
  desc.dtype = dtype;
  desc.root = root;
  desc.count = count;
  return desc;
}

uint64_t Communicator::p2p_tag(uint32_t tag) const {
  if (tag >= (uint32_t{1} << 31)) {
    throw UsageError(fmt::format("point-to-point tag {} is not below 2^31", tag));
  }
  return collective_tag() | (uint64_t{tag} + 1);
}

bool Communicator::failed() const {
  std::lock_guard lock(failure_mutex_);
  return !failure_.empty();
}

void Communicator::throw_if_failed(const std::string& what) const {
  std::lock_guard lock(failure_mutex_);
  if (!failure_.empty()) {
    throw CommError(failure_peer_, what, fmt::format("communicator failed earlier: {}", failure_));
  }
}

void Communicator::execute(const std::string& what, const std::function<void(Deadline)>& body) {
  throw_if_failed(what);
  try {
    body(Deadline::after(options_.timeout));
  } catch (const CommError& e) {
    {
      std::lock_guard lock(failure_mutex_);
      if (failure_.empty()) {
        failure_ = e.what();
        failure_peer_ = e.peer();
      }
    }
    // Tells every peer (a no-op when the collective's channel already did),
    // over the transport and through shared memory: ranks blocked on other
    // peers fail now naming the same culprit instead of running into their
    // deadlines.
    transport_.abort(e.peer(), e.what());
    if (shm_ != nullptr) shm_->abandon(e.peer(), e.what());
    throw;
  }
}

void Communicator::run_blocking(const std::string& what,
                                const std::function<void(Deadline)>& body) {
  if (!on_worker_thread()) {
    // Queued work runs first; each item is bounded by the timeout. (On the
    // worker thread this call is part of the running item: it runs now.)
    std::unique_lock lock(queue_mutex_);
    queue_changed_.wait(lock, [&] { return queue_.empty() && !busy_; });
  }
  execute(what, body);
}

void Communicator::run_collective(OpDescriptor op, const OpBody& body) {
  if (!on_worker_thread()) {
    std::unique_lock lock(queue_mutex_);
    queue_changed_.wait(lock, [&] { return queue_.empty() && !busy_; });
  }
  // Numbered now, on the thread that executes it, in execution order.
  op.seq = next_seq_++;
  TraceSpan span(trace_.load(std::memory_order_relaxed), to_string(op.kind), "comm");
  span.arg("seq", static_cast<int64_t>(op.seq));
  span.arg("count", static_cast<int64_t>(op.count));
  execute(op.describe(), [&](Deadline deadline) { body(op, deadline); });
}

Work Communicator::enqueue(std::string what, std::function<void()> run) {
  Task task;
  task.what = std::move(what);
  task.run = std::move(run);
  Work work(task.done.get_future().share());
  {
    std::lock_guard lock(queue_mutex_);
    queue_.push_back(std::move(task));
  }
  queue_changed_.notify_all();
  return work;
}

Work Communicator::submit(std::string what, std::function<void()> body) {
  std::string name = what;
  return enqueue(std::move(what), [this, name = std::move(name), body = std::move(body)] {
    execute(name, [&](Deadline) { body(); });
  });
}

void Communicator::set_trace(TraceSink* sink) {
  trace_.store(sink);
  if (sink == nullptr) return;
  // Names the worker thread's track from that thread (a no-op item).
  enqueue("trace", [sink] { sink->name_thread("comm"); }).wait(Deadline::after(options_.timeout));
}

void Communicator::worker_loop(std::stop_token stop) {
  for (;;) {
    Task task;
    {
      std::unique_lock lock(queue_mutex_);
      queue_changed_.wait(lock, stop, [&] { return !queue_.empty(); });
      if (stop.stop_requested()) {
        for (Task& pending : queue_) {
          pending.done.set_exception(std::make_exception_ptr(
              CommError(-1, pending.what, "communicator destroyed before the operation ran")));
        }
        queue_.clear();
        queue_changed_.notify_all();
        return;
      }
      task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    try {
      task.run();
      task.done.set_value();
    } catch (...) {
      task.done.set_exception(std::current_exception());
    }
    {
      std::lock_guard lock(queue_mutex_);
      busy_ = false;
    }
    queue_changed_.notify_all();
  }
}

void Communicator::announce(const OpDescriptor& desc) {
  if (shm_ != nullptr) shm_->announce(desc);
}

void Communicator::allreduce_now(std::span<float> data, ReduceOp op, const OpDescriptor& desc,
                                 Deadline deadline) {
  if (size() == 1) return;
  if (shm_ != nullptr) {
    shm_->announce(desc);
    shm_->allreduce(data, op, deadline, desc.describe());
    // What the ring would have sent (see bytes_sent()).
    const auto n = static_cast<uint64_t>(size());
    bytes_sent_.fetch_add(2 * (n - 1) * data.size_bytes() / n, std::memory_order_relaxed);
    return;
  }
  CollectiveChannel channel = open_channel(desc, deadline);
  if (size() == 2 && data.size_bytes() <= options_.pair_exchange_bytes) {
    recursive_doubling_allreduce(channel, data, op, chunk_elements(options_),
                                 window_chunks(options_));
  } else if (data.size_bytes() <= options_.small_allreduce_bytes ||
             (size() > 2 && (size() & (size() - 1)) == 0 &&
              data.size_bytes() <= options_.pow2_halving_doubling_bytes)) {
    halving_doubling_allreduce(channel, data, op, chunk_elements(options_),
                               window_chunks(options_));
  } else {
    // Two ranks: pair_chunk_bytes up to pair_chunk_max_bytes (communicator.h).
    const bool pair = size() == 2 && options_.pair_chunk_bytes > 0 &&
                      data.size_bytes() <= options_.pair_chunk_max_bytes;
    const size_t chunk = pair ? options_.pair_chunk_bytes : options_.chunk_bytes;
    ring_allreduce(channel, data, op, chunk_elements(chunk), window_chunks(options_, chunk));
  }
}

void Communicator::allreduce(std::span<float> data, ReduceOp op) {
  run_collective(make_op(OpKind::kAllreduce, data.size(), op),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   allreduce_now(data, op, desc, deadline);
                 });
}

Work Communicator::allreduce_async(std::span<float> data, ReduceOp op) {
  const OpDescriptor desc = make_op(OpKind::kAllreduce, data.size(), op);
  return enqueue(desc.describe(), [this, data, op, desc] {
    // On the worker thread: runs inline and takes its number now.
    run_collective(desc, [&](const OpDescriptor& numbered, Deadline deadline) {
      allreduce_now(data, op, numbered, deadline);
    });
  });
}

void Communicator::broadcast(std::span<float> data, int root) {
  if (root < 0 || root >= size()) {
    throw UsageError(fmt::format("broadcast: root {} outside group of size {}", root, size()));
  }
  run_collective(make_op(OpKind::kBroadcast, data.size(), ReduceOp::kSum, root),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   announce(desc);
                   CollectiveChannel channel = open_channel(desc, deadline);
                   binomial_broadcast(channel, std::as_writable_bytes(data), root,
                                      options_.chunk_bytes);
                 });
}

void Communicator::allgather(std::span<const float> mine, std::span<float> out) {
  if (out.size() != mine.size() * static_cast<size_t>(size())) {
    throw UsageError(fmt::format("allgather: output of {} floats is not {} ranks x {} floats",
                                 out.size(), size(), mine.size()));
  }
  const std::vector<size_t> counts(static_cast<size_t>(size()), mine.size() * sizeof(float));
  run_collective(
      make_op(OpKind::kAllgather, out.size()), [&](const OpDescriptor& desc, Deadline deadline) {
        allgatherv_bytes(std::as_bytes(mine), std::as_writable_bytes(out), counts, desc, deadline);
      });
}

void Communicator::allgatherv(std::span<const float> mine, std::span<float> out,
                              std::span<const size_t> counts) {
  if (counts.size() != static_cast<size_t>(size())) {
    throw UsageError(
        fmt::format("allgatherv: {} counts for a group of size {}", counts.size(), size()));
  }
  if (counts[static_cast<size_t>(rank())] != mine.size()) {
    throw UsageError(fmt::format("allgatherv: rank {} passes {} floats but counts[{}] is {}",
                                 rank(), mine.size(), rank(), counts[static_cast<size_t>(rank())]));
  }
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  if (out.size() != total) {
    throw UsageError(fmt::format("allgatherv: output of {} floats does not match the {} counted",
                                 out.size(), total));
  }
  std::vector<size_t> byte_counts(counts.begin(), counts.end());
  for (size_t& c : byte_counts) c *= sizeof(float);
  run_collective(make_op(OpKind::kAllgatherv, total), [&](const OpDescriptor& desc,
                                                          Deadline deadline) {
    allgatherv_bytes(std::as_bytes(mine), std::as_writable_bytes(out), byte_counts, desc, deadline);
  });
}

void Communicator::allgatherv_bytes(std::span<const std::byte> mine, std::span<std::byte> out,
                                    std::span<const size_t> byte_counts, const OpDescriptor& desc,
                                    Deadline deadline) {
  announce(desc);
  std::vector<size_t> offsets(byte_counts.size() + 1, 0);
  std::partial_sum(byte_counts.begin(), byte_counts.end(), offsets.begin() + 1);
  if (!mine.empty()) {
    std::memcpy(out.data() + offsets[static_cast<size_t>(rank())], mine.data(), mine.size());
  }
  CollectiveChannel channel = open_channel(desc, deadline);
  ring_allgather(channel, out, offsets, options_.chunk_bytes, window_chunks(options_));
}

void Communicator::reduce_scatter(std::span<const float> input, std::span<float> output,
                                  ReduceOp op) {
  if (input.size() != output.size() * static_cast<size_t>(size())) {
    throw UsageError(fmt::format("reduce_scatter: input of {} floats is not {} ranks x {} floats",
                                 input.size(), size(), output.size()));
  }
  run_collective(make_op(OpKind::kReduceScatter, input.size(), op),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   announce(desc);
                   std::vector<float> work(input.begin(), input.end());
                   std::vector<size_t> offsets(static_cast<size_t>(size()) + 1);
                   for (size_t b = 0; b < offsets.size(); ++b) offsets[b] = b * output.size();
                   CollectiveChannel channel = open_channel(desc, deadline);
                   ring_reduce_scatter(channel, work, offsets, op, chunk_elements(options_),
                                       window_chunks(options_));
                   const float* own = work.data() + offsets[static_cast<size_t>(rank())];
                   const float scale = op == ReduceOp::kMean ? static_cast<float>(size()) : 1.0f;
                   for (size_t i = 0; i < output.size(); ++i)
                     output[i] = op == ReduceOp::kMean ? own[i] / scale : own[i];
                 });
}

void Communicator::barrier() {
  run_collective(make_op(OpKind::kBarrier, 0), [&](const OpDescriptor& desc, Deadline deadline) {
    announce(desc);
    CollectiveChannel channel = open_channel(desc, deadline);
    dissemination_barrier(channel);
  });
}

void Communicator::allreduce16(std::span<float> data, bool bf16) {
  // Never shared memory (float32 only): the transport's ring, whatever the
  // size, so that every message carries 16-bit values.
  run_collective(make_op(OpKind::kAllreduce, data.size(), ReduceOp::kSum, -1,
                         bf16 ? Dtype::kBFloat16 : Dtype::kFloat16),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   announce(desc);
                   CollectiveChannel channel = open_channel(desc, deadline);
                   ring_allreduce16(channel, data, bf16,
                                    std::max<size_t>(1, options_.chunk_bytes / sizeof(uint16_t)),
                                    window_chunks(options_));
                 });
}

std::vector<std::vector<std::byte>> Communicator::allgather_bytes(std::span<const std::byte> mine) {
  if (mine.size() > kMaxGatherBytes) {
    throw UsageError(
        fmt::format("allgather_bytes: rank {} passes {} bytes, more than the {} allowed", rank(),
                    mine.size(), kMaxGatherBytes));
  }
  const auto n = static_cast<size_t>(size());
  // 1. Every rank's size.
  ByteWriter own_size(sizeof(uint64_t));
  own_size.write_u64(mine.size());
  std::vector<std::byte> gathered(n * sizeof(uint64_t));
  const std::vector<size_t> size_counts(n, sizeof(uint64_t));
  std::vector<size_t> counts(n);
  run_collective(make_op(OpKind::kAllgather, gathered.size(), ReduceOp::kSum, -1, Dtype::kBytes),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   allgatherv_bytes(own_size.bytes(), gathered, size_counts, desc, deadline);
                   ByteReader reader(gathered, "allgather_bytes sizes");
                   for (size_t r = 0; r < n; ++r) {
                     const uint64_t count = reader.read_u64("size");
                     if (count > kMaxGatherBytes) {
                       // Inside the collective: a CommError here fails the communicator
                       // on every rank, each naming the same rank.
                       throw CommError(
                           static_cast<int>(r), desc.describe(),
                           fmt::format("rank {} announced {} bytes, more than the {} allowed", r,
                                       count, kMaxGatherBytes));
                     }
                     counts[r] = static_cast<size_t>(count);
                   }
                 });
  // 2. The bytes, ring allgatherv.
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  std::vector<std::byte> all(total);
  run_collective(make_op(OpKind::kAllgatherv, total, ReduceOp::kSum, -1, Dtype::kBytes),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   allgatherv_bytes(mine, all, counts, desc, deadline);
                 });
  std::vector<std::vector<std::byte>> out(n);
  size_t at = 0;
  for (size_t r = 0; r < n; ++r) {
    out[r].assign(all.begin() + static_cast<std::ptrdiff_t>(at),
                  all.begin() + static_cast<std::ptrdiff_t>(at + counts[r]));
    at += counts[r];
  }
  return out;
}

void Communicator::sparse_allreduce(std::span<const uint32_t> indices,
                                    std::span<const float> values, std::span<float> out) {
  if (indices.size() != values.size()) {
    throw UsageError(
        fmt::format("sparse_allreduce: {} indices but {} values", indices.size(), values.size()));
  }
  if (out.size() > std::numeric_limits<uint32_t>::max()) {
    throw UsageError(fmt::format("sparse_allreduce: {} elements exceed u32 indices", out.size()));
  }
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] >= out.size()) {
      throw UsageError(fmt::format("sparse_allreduce: index {} at position {} is not below {}",
                                   indices[i], i, out.size()));
    }
    if (i > 0 && indices[i] <= indices[i - 1]) {
      throw UsageError(fmt::format(
          "sparse_allreduce: index {} at position {} follows {} (must be strictly increasing)",
          indices[i], i, indices[i - 1]));
    }
    if (!std::isfinite(values[i])) {
      throw UsageError(fmt::format("sparse_allreduce: value {} at index {} is not finite",
                                   values[i], indices[i]));
    }
  }
  run_collective(make_op(OpKind::kSparseAllreduce, out.size()),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   announce(desc);
                   CollectiveChannel channel = open_channel(desc, deadline);
                   sparse_ring_allreduce(channel, indices, values, out);
                 });
}

void Communicator::send(int peer, std::span<const float> data, uint32_t tag) {
  OpDescriptor desc;
  desc.kind = OpKind::kSend;
  desc.count = data.size();
  const uint64_t wire_tag = p2p_tag(tag);
  run_blocking(fmt::format("send to rank {}", peer), [&](Deadline deadline) {
    CollectiveChannel(transport_, wire_tag, desc, deadline, &bytes_sent_).send(peer, data);
  });
}

void Communicator::recv(int peer, std::span<float> data, uint32_t tag) {
  OpDescriptor desc;
  desc.kind = OpKind::kSend;
  desc.count = data.size();
  const uint64_t wire_tag = p2p_tag(tag);
  run_blocking(fmt::format("recv from rank {}", peer), [&](Deadline deadline) {
    CollectiveChannel(transport_, wire_tag, desc, deadline, &bytes_sent_).recv_into(peer, data);
  });
}

void Communicator::send_bytes(int peer, std::span<const std::byte> data, uint32_t tag) {
  OpDescriptor desc;
  desc.kind = OpKind::kSend;
  desc.dtype = Dtype::kBytes;
  desc.count = data.size();
  const uint64_t wire_tag = p2p_tag(tag);
  run_blocking(fmt::format("send to rank {}", peer), [&](Deadline deadline) {
    CollectiveChannel(transport_, wire_tag, desc, deadline, &bytes_sent_).send(peer, data);
  });
}

std::vector<std::byte> Communicator::recv_bytes(int peer, uint32_t tag) {
  OpDescriptor desc;
  desc.kind = OpKind::kSend;
  desc.dtype = Dtype::kBytes;
  const uint64_t wire_tag = p2p_tag(tag);
  std::vector<std::byte> message;
  run_blocking(fmt::format("recv from rank {}", peer), [&](Deadline deadline) {
    message =
        CollectiveChannel(transport_, wire_tag, desc, deadline, &bytes_sent_).recv_any_size(peer);
  });
  return message;
}

std::unique_ptr<Communicator> Communicator::make_child(std::vector<int> members,
                                                       uint32_t group_id) {
  CommunicatorOptions child = options_;
  child.group_id = group_id;
  return std::make_unique<Communicator>(
      std::make_unique<GroupTransport>(transport_, std::move(members)), std::move(child));
}

std::unique_ptr<Communicator> Communicator::split(int color, int key) {
  ByteWriter pair(2 * sizeof(int32_t));
  pair.write_i32(color);
  pair.write_i32(key);
  std::vector<std::byte> gathered(static_cast<size_t>(size()) * pair.size());
  const std::vector<size_t> counts(static_cast<size_t>(size()), pair.size());
  run_collective(make_op(OpKind::kSplit, gathered.size(), ReduceOp::kSum, -1, Dtype::kBytes),
                 [&](const OpDescriptor& desc, Deadline deadline) {
                   allgatherv_bytes(pair.bytes(), gathered, counts, desc, deadline);
                 });
  ByteReader reader(gathered, "split");
  std::vector<int32_t> all;  // color, key of every rank
  for (int r = 0; r < 2 * size(); ++r) all.push_back(reader.read_i32("color and key"));
  const uint64_t made = children_made_++;
  if (color < 0) return nullptr;
  std::vector<int> members;
  for (int r = 0; r < size(); ++r) {
    if (all[2 * static_cast<size_t>(r)] == color) members.push_back(r);
  }
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
    return all[2 * static_cast<size_t>(a) + 1] < all[2 * static_cast<size_t>(b) + 1];
  });
  const uint64_t hash =
      splitmix64(splitmix64(options_.group_id ^ (made << 32)) ^ static_cast<uint32_t>(color));
  return make_child(std::move(members), static_cast<uint32_t>(hash) | 0x80000000u);
}

std::unique_ptr<Communicator> Communicator::subgroup(const std::vector<int>& ranks) {
  std::vector<int> sorted = ranks;
  std::sort(sorted.begin(), sorted.end());
  if (sorted.empty() || sorted.front() < 0 || sorted.back() >= size() ||
      std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    throw UsageError(fmt::format("subgroup: ranks [{}] must be distinct ranks below {}",
                                 fmt::join(ranks, ", "), size()));
  }
  const uint64_t made = children_made_++;
  if (std::find(ranks.begin(), ranks.end(), rank()) == ranks.end()) return nullptr;
  uint64_t hash = splitmix64(options_.group_id ^ (made << 32) ^ 0x5347ull);
  for (const int r : ranks) hash = splitmix64(hash ^ static_cast<uint64_t>(r));
  return make_child(ranks, static_cast<uint32_t>(hash) | 0x80000000u);
}

}  // namespace dtrain::comm
