#include "fl/fl_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "core/error.h"
#include "fl/fl_protocol.h"
#include "fl/fl_secagg.h"
#include "fl/private_update.h"
#include "fl/sampling.h"
#include "fl/upload_codec.h"
#include "privacy/secagg_crypto.h"

namespace dtrain::fl {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kStopPoll{100};

}  // namespace

class FlClient::Impl {
 public:
  Impl(FlClientOptions options, const comm::JobAuth& auth, Logger& logger)
      : options_(std::move(options)), auth_(auth), logger_(logger) {
    if (options_.train == nullptr || !options_.make_model) {
      throw UsageError(
          fmt::format("fl client {}: no training data or model factory", options_.client));
    }
    if (options_.client < 0) {
      throw UsageError(fmt::format("fl client id {} is negative", options_.client));
    }
    trainer_ = std::make_unique<ClientTrainer>(options_.make_model, *options_.train);
    if (options_.fl.secure_aggregation) privacy::ensure_sodium();
    if (options_.upload.method != compress::Method::kNone) {
      codec_.emplace(options_.upload, layouts_of(trainer_->model()));
    }
    comm::wire::FramedSocketOptions o;
    o.name = fmt::format("fl client {}", options_.client);
    o.peer = 0;
    o.rank = client_rank(options_.client);
    o.limits.job_id = auth_.job_id();
    o.limits.world_size = 1;  // only the server (rank 0) sends to a client
    o.limits.receiver = client_rank(options_.client);
    o.limits.max_payload_bytes = options_.max_payload_bytes;
    o.accepted = {comm::wire::MessageType::kData};
    o.unbounded_queues = true;
    socket_ = std::make_unique<comm::wire::FramedSocket>(
        context_, comm::wire::FramedSocket::Role::kDealer, options_.server, std::move(o), auth_,
        logger_);
  }

  FlClientResult run(const std::stop_token& stop) {
    FlClientResult result;
    Clock::time_point heard = Clock::now();
    Clock::time_point next_join = heard;
    logger_.info("fl client {}: connecting to the server at {}", options_.client, options_.server);
    while (!stop.stop_requested()) {
      const auto now = Clock::now();
      if (now >= next_join) {
        send(encode_join(options_.client));
        next_join = now + options_.heartbeat_interval;
      }
      const Clock::time_point silent_until = heard + options_.server_timeout;
      if (now >= silent_until) {
        throw TimeoutError(
            0, fmt::format("fl client {}", options_.client), options_.server_timeout,
            fmt::format("the fl server at {} (no reply to its joins)", options_.server));
      }
      const Deadline slice(std::min({next_join, silent_until, now + kStopPoll}));
      std::optional<comm::wire::Frame> frame = socket_->receive(slice);
      if (!frame) continue;
      FlMessage m;
      try {
        m = decode_fl_message(frame->payload());
      } catch (const DataError& e) {
        socket_->drop(e.what());
        continue;
      }
      heard = Clock::now();
      switch (m.kind) {
        case FlKind::kWait:
          break;
        case FlKind::kDone:
          logger_.info("fl client {}: the server finished after round {}; {} round(s) trained",
                       options_.client, m.rounds_done, result.rounds_trained);
          result.rounds_done = m.rounds_done;
          result.done = true;
          return result;
        case FlKind::kTask:
          answer(m.task);
          ++result.rounds_trained;
          heard = Clock::now();
          next_join = heard + options_.heartbeat_interval;
          break;
        case FlKind::kSecAggSetup:
          if (!options_.fl.secure_aggregation) {
            socket_->drop("a secagg setup, but this client's job does not use secure aggregation");
          } else {
            pending_setup_ = m.secagg_setup;
          }
          break;
        case FlKind::kSecAggBroadcast:
          secagg_phase(m.secagg);
          heard = Clock::now();
          break;
        case FlKind::kJoin:
        case FlKind::kUpdate:
        case FlKind::kUpdateCompressed:
        case FlKind::kSecAggAnswer:
          socket_->drop(fmt::format("a {} message, which only clients send", to_string(m.kind)));
          break;
      }
    }
    return result;
  }

 private:
  void send(std::vector<std::byte> payload) {
    comm::wire::FrameHeader header;
    header.type = comm::wire::MessageType::kData;
    header.receiver = kServerRank;
    socket_->send({}, header, std::move(payload));
  }

  // A round's SecAgg part on this client.
  struct SecAggState {
    FlSecAggSetup setup;
    std::optional<privacy::SecAggClient> client;
    ClientUpdate update;  // the trained update (its delta is what gets masked)
    int next_phase = 1;
  };

  void send_secagg(int phase, privacy::SecAggMessage message) {
    FlSecAggPayload a;
    a.client = options_.client;
    a.round = secagg_->setup.round;
    a.session = secagg_->setup.session;
    a.phase = static_cast<uint8_t>(phase);
    if (phase == 2) {
      a.samples = secagg_->update.samples;
      a.loss = secagg_->update.loss;
      a.steps = secagg_->update.steps;
    }
    a.message = std::move(message);
    if (options_.secagg_tamper) options_.secagg_tamper(phase, a.message);
    send(encode_secagg_answer(a));
    secagg_->next_phase = phase + 1;
    if (phase == 3 || phase == options_.secagg_silent_after_phase) {
      if (phase != 3) {
        logger_.warn("fl client {}: round {}: test hook: silent after secagg phase {}",
                     options_.client, secagg_->setup.round, privacy::secagg_phase_name(phase));
      }
      secagg_.reset();
    }
  }

  // The answer to one phase's broadcast.
  void secagg_phase(const FlSecAggPayload& b) {
    const char* phase = privacy::secagg_phase_name(b.phase);
    if (!secagg_ || b.session != secagg_->setup.session || b.phase != secagg_->next_phase) {
      socket_->drop(fmt::format("secagg phase {} of round {}: not the phase this client is in",
                                phase, b.round));
      return;
    }
    try {
      privacy::SecAggClient& c = *secagg_->client;
      switch (b.phase) {
        case 1:
          send_secagg(1, c.share_keys(b.message));
          break;
        case 2: {
          Rng noise = client_noise_rng(options_.seed, b.round, options_.client);
          const std::vector<float> input =
              secagg_input(secagg_->update, options_.fl, secagg_->setup.clients,
                           secagg_->setup.mean_samples, noise);
          send_secagg(2, c.masked_input(b.message, input));
          break;
        }
        default:
          send_secagg(3, c.unmask(b.message));
          break;
      }
    } catch (const DataError& e) {
      socket_->drop(fmt::format("round {}, secagg phase {}: {}", b.round, phase, e.what()));
    } catch (const CommError& e) {
      logger_.warn("fl client {}: round {}: leaves the secure aggregation in phase {}: {}",
                   options_.client, b.round, phase, e.what());
      secagg_.reset();
    }
  }

  void answer(FlTask& task) {
    if (options_.fl.secure_aggregation &&
        (!pending_setup_ || pending_setup_->round != task.round)) {
      logger_.warn(
          "fl client {}: round {}: a task without its secure aggregation setup; not "
          "training it",
          options_.client, task.round);
      return;
    }
    if (options_.on_task) options_.on_task(task.round);
    LocalTraining training = task.training;
    training.optimizer = options_.optimizer;
    const auto samples = static_cast<int64_t>(options_.indices.size());
    const int64_t full = std::min(local_steps(samples, training), training.max_steps);
    if (options_.partial_work && seconds_per_step_ > 0.0 && task.deadline_ms > 0) {
      // Partial work (FedProx): as many steps as the last round's pace fits
      // into deadline_fraction of the round's deadline.
      const double budget =
          options_.deadline_fraction * static_cast<double>(task.deadline_ms) / 1e3;
      const double fits = std::floor(budget / seconds_per_step_);
      if (fits < static_cast<double>(full)) {
        training.max_steps = std::max<int64_t>(1, static_cast<int64_t>(fits));
        logger_.info(
            "fl client {}: round {}: {} of {} step(s) fit the deadline of {} ms at {:.4f} "
            "s a step",
            options_.client, task.round, training.max_steps, full, task.deadline_ms,
            seconds_per_step_);
      }
    }
    Rng rng = client_rng(options_.seed, task.round, options_.client);
    const auto started = Clock::now();
    ClientUpdate update =
        trainer_->train(options_.client, task.round, task.weights, options_.indices, training, rng);
    if (update.steps > 0) {
      seconds_per_step_ = options_.seconds_per_step
                              ? options_.seconds_per_step()
                              : std::chrono::duration<double>(Clock::now() - started).count() /
                                    static_cast<double>(update.steps);
    }
    if (options_.tamper) options_.tamper(update);
    logger_.info("fl client {}: round {}: {} step(s){}, loss {:.4f}", options_.client, task.round,
                 update.steps, update.partial ? " (partial)" : "", update.loss);
    if (options_.fl.secure_aggregation) {
      secagg_.emplace();
      secagg_->setup = *pending_setup_;
      pending_setup_.reset();
      secagg_->update = std::move(update);
      try {
        secagg_->client.emplace(secagg_config(secagg_->setup), secagg_->setup.index,
                                privacy::random_key());
      } catch (const UsageError& e) {  // the server's configuration is inconsistent
        socket_->drop(fmt::format("round {}: secagg setup: {}", task.round, e.what()));
        secagg_.reset();
        return;
      }
      send_secagg(0, secagg_->client->advertise_keys());
      return;
    }
    send(encode_for_upload(update));
  }

  // kUpdateCompressed when the job compresses uploads and the delta encodes;
  // else kUpdate (a delta the codec refuses, a non-finite one, goes dense so
  // that the server rejects and counts it under this client's name).
  std::vector<std::byte> encode_for_upload(const ClientUpdate& update) const {
    if (codec_) {
      try {
        return encode_compressed_update(
            update, codec_->encode(update.delta, update.round, options_.client));
      } catch (const DataError& e) {
        logger_.warn("fl client {}: {}; sending it dense", options_.client, e.what());
      }
    }
    return encode_update(update);
  }

  FlClientOptions options_;
  comm::JobAuth auth_;
  Logger& logger_;
  std::unique_ptr<ClientTrainer> trainer_;
  zmq::context_t context_{1};
  std::unique_ptr<comm::wire::FramedSocket> socket_;
  double seconds_per_step_ = 0.0;               // the last task's pace (0: none yet)
  std::optional<UploadCodec> codec_;            // compressed uploads
  std::optional<FlSecAggSetup> pending_setup_;  // the next task's SecAgg round
  std::optional<SecAggState> secagg_;           // the SecAgg round under way
};

FlClient::FlClient(FlClientOptions options, const comm::JobAuth& auth, Logger& logger)
    : impl_(std::make_unique<Impl>(std::move(options), auth, logger)) {}
FlClient::~FlClient() = default;
FlClientResult FlClient::run(std::stop_token stop) { return impl_->run(stop); }

}  // namespace dtrain::fl
