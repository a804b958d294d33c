// FlServer's implementation, shared by its three source files (not part of
// the fl module's interface): fl_server.cpp runs the rounds (waiting for
// clients, sampling, the attempts, the accountant, reporting),
// fl_server_receive.cpp handles the frames that arrive (joins, plain and
// compressed updates), fl_server_secagg.cpp runs a round's secure
// aggregation (setup, the four phases, the answers). The contract is
// fl/fl_server.h's.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "core/deadline.h"
#include "fl/fl_protocol.h"
#include "fl/fl_secagg.h"
#include "fl/fl_server.h"
#include "fl/round_accountant.h"
#include "fl/server_optimizer.h"
#include "fl/update.h"
#include "fl/upload_codec.h"
#include "privacy/secagg.h"

namespace dtrain::fl {

class FlServer::Impl {
 public:
  using Clock = std::chrono::steady_clock;
  using milliseconds = std::chrono::milliseconds;

  Impl(FlServerOptions options, const comm::JobAuth& auth, Logger& logger);

  FlServerResult run(const std::stop_token& stop);
  FlServerStats stats() const {
    FlServerStats s;
    s.rounds_done = rounds_done_.load();
    s.rejected_updates = rejected_.load();
    s.dropped_frames = socket_->dropped();
    s.connected = connected_count_.load();
    return s;
  }

  const std::string& endpoint() const { return endpoint_; }

 private:
  struct KnownClient {
    std::string identity;  // the ROUTER routing id of its latest connection
    Clock::time_point last_heard;
    // Sampled and silent until a round's deadline: not sampled again until
    // it is heard from (a join or a late update).
    bool missed = false;
  };
  // A round's secure aggregation (config.secure_aggregation).
  struct SecAggRound {
    explicit SecAggRound(const privacy::SecAggConfig& config)
        : server(config), session(config.round), threshold(config.threshold) {}
    privacy::SecAggServer server;
    uint32_t session = 0;
    uint32_t threshold = 0;
    std::vector<int64_t> ids;           // SecAgg index -> client id
    std::map<int64_t, uint32_t> index;  // client id -> SecAgg index
    int phase = 0;
    std::set<int64_t> outstanding;  // expected to answer this phase
    std::vector<int64_t> answered;  // answered this phase (accepted)
    struct Meta {
      int64_t samples = 0;
      double loss = 0;
    };
    std::map<int64_t, Meta> meta;  // phase 2's plaintext metadata
    // After phase 3: the mean delta and the included clients (ascending).
    std::optional<std::vector<float>> mean_delta;
    std::vector<int64_t> included;
    std::string failure;  // why the attempt failed (a phase short of answers)
  };
  // The round whose updates are being collected.
  struct OpenRound {
    RoundAggregator aggregator;
    std::set<int64_t> outstanding;  // sampled, not answered yet
    std::set<int64_t> partial;      // accepted partial work
    uint64_t bytes_up = 0;
    int64_t rejected = 0;
    std::optional<SecAggRound> secagg;
    double sampling_rate = 0;  // the accountant's q: sampled over the connected pool

    int64_t accepted() const {
      if (!secagg) return aggregator.accepted();
      return secagg->mean_delta ? static_cast<int64_t>(secagg->included.size()) : 0;
    }
    std::vector<int64_t> accepted_clients() const {
      if (!secagg) return aggregator.accepted_clients();
      return secagg->mean_delta ? secagg->included : std::vector<int64_t>{};
    }
    std::vector<float> mean_delta() const {
      return secagg ? *secagg->mean_delta : aggregator.mean_delta();
    }
    double mean_loss() const;
  };

  std::vector<int64_t> connected(Clock::time_point now) const;
  // Receives and handles frames until `until` (or `stop`). Returns when a
  // frame was handled or the deadline passed.
  void serve_once(Deadline until, OpenRound* open);
  void handle(const comm::wire::Frame& frame, OpenRound* open);
  void handle_update(const comm::wire::Frame& frame, ClientUpdate update, OpenRound* open);
  // Whether `frame` came from `client`'s wire rank (else `what` is rejected
  // naming both); refreshes the client's last_heard when it came over the
  // client's latest connection.
  bool from_client(const comm::wire::Frame& frame, int64_t client, std::string_view what,
                   OpenRound* open);
  void reject(const std::string& reason, OpenRound* open);
  void handle_secagg(const comm::wire::Frame& frame, const FlSecAggPayload& answer,
                     OpenRound* open);
  // Starts the attempt's SecAgg session among `sampled` (ascending) and
  // sends each its kSecAggSetup.
  void open_secagg(OpenRound& open, const std::vector<int64_t>& sampled, int64_t round,
                   size_t model_size, RoundReport& report);
  // Runs the four SecAgg phases of an attempt whose tasks were sent;
  // false when stopped.
  bool run_secagg(OpenRound& open, Clock::time_point started, milliseconds timeout,
                  RoundReport& report, const std::stop_token& stop);
  void send(const std::string& identity, int64_t client, std::vector<std::byte> payload);
  // Waits until enough clients are connected for `round` (see the header).
  void wait_for_clients(int64_t round, bool first, const std::stop_token& stop);
  // Runs one attempt at `round` among the `available` clients; nullopt when stopped.
  std::optional<OpenRound> collect(int64_t round, int attempt,
                                   const std::vector<int64_t>& available,
                                   std::span<const float> weights, RoundReport& report,
                                   const std::stop_token& stop);
  // The attempts at `round` until one has min_fit_clients updates (returned),
  // the run is stopped or the privacy budget stops it (nullopt; `result`
  // says which). Throws CommError after max_round_attempts failed attempts.
  std::optional<OpenRound> attempt_round(int64_t round, bool first, std::span<const float> weights,
                                         RoundReport& report, FlServerResult& result,
                                         const std::stop_token& stop);
  // Applies the attempt's mean, steps the accountant and fills the report.
  void apply_round(const OpenRound& open, ServerOptimizer& optimizer, ServerState& state,
                   RoundReport& report);
  void finish(int64_t rounds_done);

  FlServerOptions options_;
  RoundAccountant accountant_;  // DP-FedAvg (inert without fl.dp_clip)
  comm::JobAuth auth_;
  Logger& logger_;
  zmq::context_t context_{1};
  std::unique_ptr<comm::wire::FramedSocket> socket_;
  std::string endpoint_;
  int64_t model_size_ = 0;
  std::optional<UploadCodec> codec_;  // compressed uploads
  std::map<int64_t, KnownClient> clients_;
  bool done_ = false;
  int64_t done_rounds_ = 0;
  std::atomic<int64_t> rounds_done_{0};
  std::atomic<int64_t> rejected_{0};
  std::atomic<int64_t> connected_count_{0};
  uint32_t secagg_sessions_ = 0;  // SecAgg sessions started (one per round attempt)
};

}  // namespace dtrain::fl
