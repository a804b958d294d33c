#include "strategy/elastic_allreduce.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <span>

#include "comm/transport/zmq_transport.h"
#include "core/byte_codec.h"
#include "core/trace.h"
#include "io/safetensors.h"

namespace dtrain::strategy {

namespace {

using Clock = std::chrono::steady_clock;

// Point-to-point tag of the state rank 0 sends after a re-formation.
constexpr uint32_t kStateTag = 0x454c41;  // "ELA"

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::unique_ptr<comm::ElasticGroupRendezvous> make_rendezvous(const ElasticAllReduceOptions& o,
                                                              const comm::JobAuth& auth,
                                                              Logger& logger) {
  if (o.etcd) {
    comm::EtcdRendezvousOptions e = *o.etcd;
    e.slot = o.slot;
    return std::make_unique<comm::EtcdElasticRendezvous>(e, logger);
  }
  return std::make_unique<comm::ElasticRendezvousClient>(o.coordinator, o.slot, o.slots, auth,
                                                         logger);
}

}  // namespace

ElasticAllReduce::ElasticAllReduce(ElasticAllReduceOptions options, ModelFactory make_model,
                                   OptimizerFactory make_optimizer, LossFn loss, Logger& logger)
    : options_(std::move(options)),
      make_model_(std::move(make_model)),
      make_optimizer_(std::move(make_optimizer)),
      loss_(std::move(loss)),
      logger_(logger),
      auth_(options_.job_name, options_.secret, options_.encrypt),
      client_(make_rendezvous(options_, auth_, logger)) {
  const auto t0 = Clock::now();
  form(std::nullopt);
  joined_running_ = generation_ > 0;
  if (joined_running_) {
    logger_.warn(
        "slot {}: joined the running group in {:.3f} s: generation {}, rank {} of {}, "
        "at step {}",
        options_.slot, seconds_since(t0), generation_, inner_->rank(), inner_->world_size(),
        held_->position.step);
  }
}

ElasticAllReduce::~ElasticAllReduce() = default;

bool ElasticAllReduce::joined_running_group(TrainingPosition& position) {
  if (!joined_running_ || !held_) return false;
  position = held_->position;
  return true;
}

bool ElasticAllReduce::reform_due() {
  float flag = 0.0f;
  if (inner_->rank() == 0 && client_->poll() > 0) flag = 1.0f;
  try {
    comm_->allreduce(std::span<float>(&flag, 1), comm::ReduceOp::kMax);
  } catch (const CommError& e) {
    note_failure(e);
    return true;
  }
  return flag > 0.0f;
}

StepStats ElasticAllReduce::train_step(const Tensor& inputs, std::span<const int64_t> targets) {
  try {
    return group().train_step(inputs, targets);
  } catch (const CommError& e) {
    note_failure(e);
    throw;
  }
}

void ElasticAllReduce::note_failure(const CommError& e) {
  failure_ = e.what();
  // The peer a failure names is a rank of the current generation: its slot
  // is reported to the coordinator as silent.
  if (e.peer() >= 0 && static_cast<size_t>(e.peer()) < slots_by_rank_.size() &&
      slots_by_rank_[static_cast<size_t>(e.peer())] != options_.slot) {
    suspect_ = slots_by_rank_[static_cast<size_t>(e.peer())];
  }
}

AllReduceStrategy& ElasticAllReduce::group() const {
  if (!inner_) {
    throw InternalError(fmt::format(
        "slot {}: the elastic worker has no group (it left the job); nothing may use it",
        options_.slot));
  }
  return *inner_;
}

void ElasticAllReduce::reform(TrainingPosition& position, const std::string& cause) {
  const auto t0 = Clock::now();
  TraceSpan span(options_.allreduce.trace, "reform", "setup");
  const std::string why = failure_.empty() ? cause : failure_;
  failure_.clear();
  logger_.warn("slot {} (rank {} of {}, generation {}) at step {}: re-forming the group: {}",
               options_.slot, inner_->rank(), inner_->world_size(), generation_, position.step,
               why);
  held_ =
      HeldState{inner_->model().state_dict().clone(), inner_->optimizer_state().clone(), position};
  inner_.reset();
  comm_.reset();
  form(generation_);
  position = held_->position;
  logger_.warn(
      "slot {}: the group re-formed in {:.3f} s: generation {}, rank {} of {}, "
      "continuing at step {} (epoch {}, batch {})",
      options_.slot, seconds_since(t0), generation_, inner_->rank(), inner_->world_size(),
      position.step, position.epoch + 1, position.batch_in_epoch + 1);
}

void ElasticAllReduce::form(std::optional<uint32_t> member_of) {
  const Deadline deadline = Deadline::after(options_.rendezvous_timeout);
  TraceSpan span(options_.allreduce.trace, "rendezvous", "setup");
  while (true) {
    std::vector<int> suspects;
    if (suspect_) suspects.push_back(*suspect_);
    suspect_.reset();
    std::optional<comm::ElasticGeneration> m;
    try {
      m = client_->join(member_of, deadline, suspects);
    } catch (const comm::LeftOutError& e) {
      throw LeftGroup(
          fmt::format("slot {}: dropped from the job: {}; exiting", options_.slot, e.what()));
    }
    if (!m) {
      throw JobFinished(
          fmt::format("slot {}: the job finished training while this worker waited "
                      "to join; nothing left to do",
                      options_.slot));
    }
    try {
      build(*m, deadline);
      generation_ = m->generation;
      slots_by_rank_ = m->slots;
      // A group that has trained agrees on its rank 0's state; generation 0
      // starts from the job's initial state (or its checkpoint) everywhere.
      if (m->generation > 0) sync_state();
      return;
    } catch (const CommError& e) {
      logger_.warn("slot {}: generation {} failed while forming: {}; joining again", options_.slot,
                   m->generation, e.what());
      if (e.peer() >= 0 && static_cast<size_t>(e.peer()) < m->slots.size() &&
          m->slots[static_cast<size_t>(e.peer())] != options_.slot) {
        suspect_ = m->slots[static_cast<size_t>(e.peer())];
      }
      inner_.reset();
      comm_.reset();
      // A member with the group's state re-joins as a member; one without
      // it (a new worker) as new, so that it never becomes rank 0.
      if (held_) member_of = m->generation;
    }
  }
}

void ElasticAllReduce::build(const comm::ElasticGeneration& m, Deadline deadline) {
  comm::ZmqTransportOptions t;
  t.rank = m.rank;
  t.world_size = m.world_size();
  t.listen_host = options_.listen_host;
  t.advertise_host = options_.advertise_host;
  if (!options_.ipc_dir.empty()) t.ipc_dir = options_.ipc_dir;
  // A re-formation destroys the transport with frames to a dead peer still
  // queued: waiting the default linger (1 s) for them would only delay it.
  t.linger = std::chrono::milliseconds(50);
  // A stopped member is noticed within the heartbeat timeout (and reported
  // to the coordinator as silent), not at a collective's deadline.
  t.heartbeat_timeout = options_.heartbeat_timeout;
  t.heartbeat_interval = std::min(std::chrono::milliseconds(200), options_.heartbeat_timeout / 4);
  auto transport = std::make_unique<comm::ZmqTransport>(t, auth_, logger_);
  transport->connect(
      client_->exchange_endpoints(m.generation, transport->local_endpoint(), deadline));
  comm::CommunicatorOptions c;
  c.timeout = options_.rendezvous_timeout;
  // Names this generation's shared-memory segments: unique per job,
  // rendezvous and generation.
  const std::string rendezvous =
      options_.etcd ? options_.etcd->endpoint + "/" + options_.etcd->job_id : options_.coordinator;
  c.job_id = fmt::format("{:016x}-{:x}-g{}", auth_.job_id(), std::hash<std::string>{}(rendezvous),
                         m.generation);
  comm_ = std::make_unique<comm::Communicator>(std::move(transport), c);
  inner_ = std::make_unique<AllReduceStrategy>(make_model_(), make_optimizer_, *comm_,
                                               options_.allreduce, loss_);
  inner_->set_communication_level(level_);
}

void ElasticAllReduce::sync_state() {
  const int rank = static_cast<int>(inner_->rank());
  const int world = static_cast<int>(inner_->world_size());
  if (rank == 0) {
    if (!held_) {
      // The group has not trained yet (an earlier generation failed while
      // forming): the initial state is the group's.
      held_ =
          HeldState{inner_->model().state_dict().clone(), inner_->optimizer_state().clone(), {}};
    }
    // Layout: u64 step, epoch, batch_in_epoch; u64 model length; the model's
    // safetensors bytes; the optimizer's safetensors bytes (to the end).
    const std::string model = io::encode_safetensors(held_->model);
    const std::string optimizer = io::encode_safetensors(held_->optimizer);
    ByteWriter w(4 * sizeof(uint64_t) + model.size() + optimizer.size());
    w.write_i64(held_->position.step);
    w.write_i64(held_->position.epoch);
    w.write_i64(held_->position.batch_in_epoch);
    w.write_blob(std::as_bytes(std::span(model.data(), model.size())), LengthPrefix::kU64);
    w.write_bytes(std::as_bytes(std::span(optimizer.data(), optimizer.size())));
    for (int peer = 1; peer < world; ++peer) comm_->send_bytes(peer, w.bytes(), kStateTag);
  } else {
    const std::vector<std::byte> bytes = comm_->recv_bytes(0, kStateTag);
    ByteReader r(bytes, "elastic state from rank 0");
    HeldState state;
    state.position.step = r.read_i64("step");
    state.position.epoch = r.read_i64("epoch");
    state.position.batch_in_epoch = r.read_i64("batch_in_epoch");
    const auto as_text = [](std::span<const std::byte> b) {
      return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
    };
    const std::span<const std::byte> model =
        r.read_blob("model", std::numeric_limits<size_t>::max(), LengthPrefix::kU64);
    state.model = io::decode_safetensors(as_text(model), "elastic state (model) from rank 0");
    state.optimizer =
        io::decode_safetensors(as_text(r.rest()), "elastic state (optimizer) from rank 0");
    held_ = std::move(state);
  }
  inner_->model().load_state_dict(held_->model, true);
  inner_->load_optimizer_state(held_->optimizer);
}

}  // namespace dtrain::strategy
