// ps::ConsistencyState: the consistency rules of one parameter server
// (server.h, docs/parameter-server.md "Consistency"), apart from its socket
// and its request decoding: worker membership (live, dead, finished), the
// version and the SSP clocks, the sync aggregation of the pushes held for the
// open version, and whether a pull may be answered.
//
// server.cpp decodes and validates a request (sizes, tables, key owners),
// asks here whether a push is taken (admit_push / admit_rows), applies what
// must be applied at once (async, ssp), and after every event that can
// complete a sync version (a push, a goodbye, a death) calls close_version()
// and applies the update it returns to its DenseShard and SparseTables. This
// class never touches values: it decides, the server applies.
//
// Sync aggregation: every push of the open version is held by worker index
// and summed in worker-index order at the close, so the same pushes give the
// same bits whatever order they arrived in. Rows are summed per key in worker
// order and returned in key order.
//
// Ownership: holds the workers' records and the open version's pushes; the
// Logger must outlive it. Thread safety: none (the server's loop thread).
// Errors: admit_push / admit_rows throw Refusal for a request that must be
// answered with an error (nothing changed then). Never blocks.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "core/log.h"
#include "ps/messages.h"
#include "ps/server.h"

namespace dtrain::ps {

// A request that decodes but cannot be served: answered with an error reply.
class Refusal : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What happens to a push.
enum class Admission {
  kApplyNow,  // async / ssp: the caller applies it now
  kHeld,      // sync: held for the open version
  kDropped,   // sync: late (the version closed without it) or superseded; answered kDropped
};

// A closed sync version's update, to be applied by the server.
struct VersionUpdate {
  // False when every counted push had 0 samples: nothing to apply.
  bool apply = false;
  float lr = 0.0f;
  std::vector<float> grad;  // sum_i n_i g_i / sum_i n_i over the server's range
  struct Rows {
    uint32_t table = 0;
    std::vector<uint64_t> keys;  // ascending, unique
    std::vector<float> grads;    // keys.size() * D: per row sum_i n_i g_i / sum_i n_i
  };
  std::vector<Rows> rows;  // by table, tables without rows left out
};

class ConsistencyState {
 public:
  using Clock = std::chrono::steady_clock;

  // Every worker counts as live (heard at `start`). `options` as validated by
  // the server.
  ConsistencyState(const ServerOptions& options, Logger& logger, Clock::time_point start);

  uint64_t version() const { return version_; }
  WorkerState state(uint32_t worker) const { return workers_[worker].state; }
  uint64_t clock(uint32_t worker) const { return workers_[worker].clock; }

  // A frame from `worker` (live) arrived at `now`.
  void heard(uint32_t worker, Clock::time_point now);
  // Its init: a dead or finished worker rejoins at the current version (SSP:
  // at the slowest live clock); a restarted worker whose previous incarnation
  // already pushed for the open version has its next pushes for it dropped.
  void join(uint32_t worker);
  // Its goodbye.
  void finish(uint32_t worker);
  // Declares dead every live worker silent for longer than the heartbeat
  // timeout (logged with its silence).
  void check_liveness(Clock::time_point now);

  // A dense push of `worker` (m.version, samples, lr, loss_sum, correct,
  // compute_s, the
  // gradient in m.floats or m.float_bytes with m.payload_owner, already
  // checked for size). A held push's gradient
  // is moved out of `m`.
  Admission admit_push(uint32_t worker, Message& m);
  // A row push of `worker` (m.version, table, keys, floats, already checked).
  // A held push's keys and rows are moved out of `m`.
  Admission admit_rows(uint32_t worker, Message& m);
  // Sync: when the open version has the pushes it needs (every live worker's,
  // or the first N_live - backup_workers), closes it: version() advances and
  // the update is returned. std::nullopt otherwise, and always in async/ssp.
  std::optional<VersionUpdate> close_version();
  // A loaded state: the version becomes `version`; the open version's pushes
  // and the last totals are discarded.
  void reset(uint64_t version);
  // A replacement server (ServerOptions::replacement) catching up with the
  // workers: a request carrying `version` > version() moves it there as
  // reset() does (the open version's pushes are discarded: the workers have
  // gone past it), logged with `cause`. Nothing happens otherwise.
  void follow(uint64_t version, std::string_view cause);

  // Whether a pull of `worker` for min_version may be answered now (the
  // server checks that it is initialised).
  bool pull_ready(uint32_t worker, uint64_t min_version) const;
  uint64_t min_live_clock() const;
  size_t live_workers() const;
  // No worker is live and at least one finished.
  bool finished() const;
  // Sync: the totals of the last closed version, with every worker's samples
  // and compute seconds (zeros and no workers before the first).
  const StepTotals& last_totals() const { return last_totals_; }
  // Fills version, workers, clocks, min_clock, pushes_applied, pushes_dropped.
  void fill(ServerStats& stats) const;

 private:
  struct Worker {
    WorkerState state = WorkerState::kLive;
    Clock::time_point last_heard;
    bool heard = false;  // any frame from it yet (else join_timeout applies)
    uint64_t clock = 0;
    std::optional<uint64_t> pushed_version;  // sync: last version this worker pushed for
    std::optional<uint64_t> rejoined_at;     // version at which it last rejoined
  };
  struct HeldRows {
    uint32_t table = 0;
    std::vector<uint64_t> keys;
    std::vector<float> grads;  // keys.size() * D
  };
  // What a worker contributes to the open sync version.
  struct Contribution {
    bool pushed = false;  // its dense push counts in this version
    int64_t samples = 0;
    float lr = 0.0f;
    double loss_sum = 0.0;
    int64_t correct = 0;
    double compute_s = 0.0;
    // The dense push: owned floats (a compressed push's decode), or viewed
    // in its received payload, which grad_owner keeps until the version
    // closes (Message::float_bytes; little-endian f32 at any alignment).
    std::vector<float> grad;
    std::span<const std::byte> grad_bytes;
    std::shared_ptr<const void> grad_owner;
    std::vector<HeldRows> rows;  // row pushes for this version, in arrival order
  };

  // sum += n · c's gradient, owned or viewed.
  static void add_scaled(std::span<float> sum, float n, const Contribution& c);
  void sum_rows(VersionUpdate& update, float scale) const;
  void clear_version();

  ServerOptions options_;
  Logger& logger_;
  std::vector<Worker> workers_;
  std::vector<Contribution> held_;  // by worker index
  size_t pushes_in_version_ = 0;
  uint64_t version_ = 0;
  StepTotals last_totals_;
  uint64_t pushes_applied_ = 0;
  uint64_t pushes_dropped_ = 0;
};

}  // namespace dtrain::ps
