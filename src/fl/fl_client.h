// FlClient: one client of a deployed federated job (`dtrain fl-client JOB
// --client-id k`). It connects a DEALER socket to the server
// (fl/fl_protocol.h over comm/wire/framed_socket.h, authenticated with the
// job secret) and loops:
//   - while idle it sends kJoin every heartbeat_interval: its proof of life,
//     and its way back in after a server restart (ZeroMQ reconnects the
//     socket; the new server learns the client from its next join);
//   - on kTask it trains with its ClientTrainer on its own samples (the
//     job's optimizer, the task's epochs, batch and mu; the RNG stream
//     client_rng(seed, round, client)) and answers kUpdate; with
//     partial_work it trains only the steps its last pace fits into the
//     task's deadline (see FlClientOptions);
//   - with secure aggregation (fl.secure_aggregation; fl/fl_secagg.h): a
//     kSecAggSetup announces the next task's SecAgg round; after training
//     that task the client creates its privacy::SecAggClient (fresh random
//     entropy) and answers phase 0 (its keys); each kSecAggBroadcast of the
//     same session is answered with the phase's message (phase 2 masks
//     secagg_input() of the update, fl/private_update.h, with its samples,
//     loss and steps beside it in the clear). A task
//     without its setup is not trained (logged). A broadcast the SecAgg
//     client refuses (DataError) is dropped and counted naming the phase; a
//     CommError of it (too few neighbours left) ends its part in the round;
//   - on kDone it returns.
// It gives up with a TimeoutError naming the server's address when it has
// heard nothing from the server (no reply of any kind) for server_timeout.
//
// Ownership: owns its ZeroMQ context, socket and trainer (one model); the
// dataset and the Logger must outlive it. Thread safety: run() on one
// thread. Errors: CommError/TimeoutError as above; what ClientTrainer throws
// (UsageError when the server's model has another size). Blocking: run()
// until kDone, `stop`, or server_timeout of silence; training a task is not
// interrupted.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include "comm/wire/auth.h"
#include "compress/compressor.h"
#include "core/log.h"
#include "data/dataset.h"
#include "fl/client_trainer.h"
#include "fl/fl_config.h"
#include "fl/update.h"
#include "optim/optimizer_config.h"

namespace dtrain::fl {

struct FlClientOptions {
  int64_t client = 0;
  std::string server;  // "tcp://HOST:PORT"
  uint64_t seed = 1;   // the job's seed (client_rng)
  ModelFactory make_model;
  const data::TensorDataset* train = nullptr;  // outlives the client
  std::vector<int64_t> indices;                // this client's samples
  optim::OptimizerConfig optimizer;            // the job's [optimizer]
  // The job's upload codec options (fl/upload_codec.h): a method other than
  // none sends each update as kUpdateCompressed.
  compress::Options upload;
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds server_timeout{60000};
  uint64_t max_payload_bytes = uint64_t{1} << 30;
  // Partial work (fl.algorithm fedprox, Li et al. 2020): from its second
  // task on, a client that at its last task's pace (seconds per step) would
  // not finish within deadline_fraction of the task's deadline stops after
  // the steps that fit (at least 1) and sends them marked partial.
  bool partial_work = false;
  double deadline_fraction = 0.8;
  // Tests: the pace (seconds per step) to assume instead of the measured one.
  std::function<double()> seconds_per_step;
  // Called with a task's round before training it (the command's test
  // hooks: a client that kills itself mid-round).
  std::function<void(int64_t round)> on_task;
  // Tests: replaces the trained update just before it is sent (a client
  // that sends a wrong shape, a non-finite value, a stale round).
  std::function<void(ClientUpdate&)> tamper;
  // The job's [fl] keys of secure aggregation and DP (fl/private_update.h):
  // with fl.secure_aggregation the server's kSecAggSetup is expected before
  // each task, plain updates are never sent, and the masked vector is
  // secagg_input() of the update (its noise share from client_noise_rng).
  FlConfig fl;
  // Tests: after sending its answer of this SecAgg phase (0..3) the client
  // answers no more of that round's phases (-1: off), e.g. 2 is a client
  // that stops answering after masking.
  int secagg_silent_after_phase = -1;
  // Tests: replaces this client's SecAgg message of a phase (0..3) just
  // before it is sent (a malformed answer).
  std::function<void(int phase, std::vector<std::byte>& message)> secagg_tamper;
};

struct FlClientResult {
  int64_t rounds_trained = 0;  // tasks answered
  int64_t rounds_done = 0;     // what the server's kDone said
  bool done = false;           // told done (else stopped)
};

class FlClient {
 public:
  FlClient(FlClientOptions options, const comm::JobAuth& auth, Logger& logger);
  ~FlClient();
  FlClient(const FlClient&) = delete;
  FlClient& operator=(const FlClient&) = delete;

  FlClientResult run(std::stop_token stop = {});

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtrain::fl
