// The gossip strategy: workers as threads over an InProcPeerHub. Synchronous
// gossip against serial references (allreduce's model averaging with a full
// topology, W x for a ring), AD-PSGD's mass preservation and absence of
// deadlock under random delays, dropping a dead neighbour, a replacement
// joining, the chief's average and consensus distance, and the spec.
#include "strategy/gossip_strategy.h"

#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "comm/peer/inproc_peer_link.h"
#include "core/config_table.h"
#include "strategy/local_strategy.h"
#include "strategy/registry.h"
#include "strategy_test_util.h"
#include "testing/expect_error.h"

namespace dtrain::strategy {
namespace {

using namespace std::chrono_literals;
using gossip::Topology;
using gossip::TopologyKind;

// Plain SGD (no momentum), so that a step is exactly x - lr g.
OptimizerFactory plain_sgd(float lr) {
  return [lr](std::vector<Variable> params) {
    optim::SgdOptions o;
    o.lr = lr;
    return nn::Optimizer::make<optim::Sgd>(std::move(params), o);
  };
}

ModelFactory mlp() {
  return [] { return test::make_mlp(7); };
}

// A logger that keeps its lines.
struct Lines {
  std::mutex mutex;
  std::vector<std::string> lines;
  Logger logger{LogLevel::kInfo, [this](LogLevel, std::string_view line) {
                  const std::lock_guard lock(mutex);
                  lines.emplace_back(line);
                }};
  bool contains(const std::string& text) {
    const std::lock_guard lock(mutex);
    for (const std::string& l : lines) {
      if (l.find(text) != std::string::npos) return true;
    }
    return false;
  }
};

std::vector<float> flat(nn::Module& model) {
  std::vector<float> out;
  for (const Variable& p : model.parameters()) {
    const std::vector<float> v = p.data().to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

void set_flat(nn::Module& model, const std::vector<float>& values) {
  size_t offset = 0;
  for (const Variable& p : model.parameters()) {
    for (float& v : p.data().span()) v = values[offset++];
  }
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0.0;
  for (size_t k = 0; k < std::min(a.size(), b.size()); ++k) {
    worst = std::max(worst, std::abs(double(a[k]) - double(b[k])));
  }
  return worst;
}

// N gossip workers over one hub, built before any thread runs (so that every
// handler is set before a peer may call), each with its own log.
struct Group {
  Group(int n, GossipOptions options, OptimizerFactory optimizer = plain_sgd(0.1f))
      : hub(n), logs(static_cast<size_t>(n)) {
    options.timeout = 20s;
    options.exit_grace = 0ms;  // threads, not processes, end after their goodbye
    for (int r = 0; r < n; ++r) {
      logs[static_cast<size_t>(r)] = std::make_unique<Lines>();
      workers.push_back(std::make_unique<GossipStrategy>(hub.link(r), mlp(), optimizer, options,
                                                         cross_entropy_loss(),
                                                         logs[static_cast<size_t>(r)]->logger));
    }
  }
  // Runs body(rank) on one thread per worker; rethrows the first error.
  void run(const std::function<void(int)>& body) {
    std::vector<std::exception_ptr> errors(workers.size());
    {
      std::vector<std::jthread> threads;
      for (int r = 0; r < static_cast<int>(workers.size()); ++r) {
        threads.emplace_back([&, r] {
          try {
            body(r);
          } catch (...) {
            errors[static_cast<size_t>(r)] = std::current_exception();
          }
        });
      }
    }
    for (size_t r = 0; r < errors.size(); ++r) {
      if (errors[r]) {
        try {
          std::rethrow_exception(errors[r]);
        } catch (const std::exception& e) {
          ADD_FAILURE() << "worker " << r << ": " << e.what();
        }
      }
    }
  }
  // Gives every worker its own starting model (distinct values).
  void spread_starts(uint64_t seed) {
    Rng rng(seed);
    for (auto& w : workers) {
      std::vector<float> values = flat(w->model());
      for (float& v : values) v = rng.normal();
      set_flat(w->model(), values);
      w->sync_replicas();
    }
  }
  std::vector<float> sum_of_models() {
    std::vector<float> sum;
    for (auto& w : workers) {
      const std::vector<float> x = w->own_parameters();
      if (sum.empty()) sum.assign(x.size(), 0.0f);
      for (size_t k = 0; k < x.size(); ++k) sum[k] += x[k];
    }
    return sum;
  }

  comm::InProcPeerHub hub;
  std::vector<std::unique_ptr<Lines>> logs;
  std::vector<std::unique_ptr<GossipStrategy>> workers;
};

// Worker r's share of batch b: rows [r rows, (r + 1) rows) of a global batch.
struct Data {
  Data(int workers, int64_t rows, int steps)
      : rows(rows), batches(test::make_batches(steps, rows * workers, 11)) {}
  Tensor x(int step, int r) const {
    return batches[static_cast<size_t>(step)].x.narrow(r * rows, rows);
  }
  std::span<const int64_t> y(int step, int r) const {
    return std::span(batches[static_cast<size_t>(step)].y)
        .subspan(static_cast<size_t>(r * rows), static_cast<size_t>(rows));
  }
  int64_t rows;
  std::vector<test::Batch> batches;
};

TEST(GossipStrategy, FullTopologySyncEqualsAllReduceModelAveraging) {
  constexpr int kWorkers = 4, kSteps = 6;
  GossipOptions o;
  o.topology = TopologyKind::kFull;
  Group g(kWorkers, o);
  const Data data(kWorkers, 5, kSteps);
  g.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) g.workers[r]->train_step(data.x(s, r), data.y(s, r));
    g.workers[r]->finish();
  });
  // With equal weights 1/N, each step is the mean of the workers' local SGD
  // steps from one common model: one model stepping on the mean gradient of
  // the union of the equal shares.
  LocalStrategy reference(mlp()(), plain_sgd(0.1f));
  for (int s = 0; s < kSteps; ++s) {
    reference.train_step(data.batches[s].x, data.batches[s].y);
  }
  const std::vector<float> expected = flat(reference.model());
  for (int r = 0; r < kWorkers; ++r) {
    EXPECT_LT(max_abs_difference(g.workers[r]->own_parameters(), expected), 1e-6) << "worker " << r;
    EXPECT_EQ(g.workers[r]->steps(), kSteps);
    EXPECT_EQ(g.workers[r]->last_row().neighbours.size(), 3u);
  }
}

// Every worker's own model after `steps` of synchronous gossip, computed
// serially: each worker's local SGD step from its model, then X <- W_t X.
std::vector<std::vector<float>> serial_gossip(const Topology& topology, const Data& data,
                                              std::vector<std::vector<float>> starts, int steps,
                                              float lr) {
  const int n = topology.workers();
  std::vector<std::vector<float>> x = std::move(starts);
  for (int s = 0; s < steps; ++s) {
    for (int r = 0; r < n; ++r) {
      LocalStrategy local(mlp()(), plain_sgd(lr));
      set_flat(local.model(), x[r]);
      local.train_step(data.x(s, r), data.y(s, r));
      x[r] = flat(local.model());
    }
    const std::vector<double> w = topology.matrix(s);
    std::vector<std::vector<float>> mixed(x.size());
    for (int i = 0; i < n; ++i) {
      std::vector<double> sum(x[i].size(), 0.0);
      for (int j = 0; j < n; ++j) {
        const double wij = w[static_cast<size_t>(i * n + j)];
        for (size_t k = 0; k < sum.size(); ++k) sum[k] += wij * x[j][k];
      }
      mixed[i].assign(sum.begin(), sum.end());
    }
    x = std::move(mixed);
  }
  return x;
}

void expect_sync_matches_serial(TopologyKind kind, int n, float lr) {
  constexpr int kSteps = 5;
  GossipOptions o;
  o.topology = kind;
  Group g(n, o, plain_sgd(lr));
  g.spread_starts(3);
  std::vector<std::vector<float>> starts;
  for (auto& w : g.workers) starts.push_back(w->own_parameters());
  const std::vector<float> sum_before = g.sum_of_models();
  const Data data(n, 4, kSteps);
  g.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) g.workers[r]->train_step(data.x(s, r), data.y(s, r));
    g.workers[r]->finish();
  });
  const auto expected = serial_gossip(g.workers[0]->topology(), data, starts, kSteps, lr);
  for (int r = 0; r < n; ++r) {
    EXPECT_LT(max_abs_difference(g.workers[r]->own_parameters(), expected[r]), 1e-5)
        << "worker " << r;
  }
  if (lr == 0.0f) {
    // Mixing alone keeps the sum and contracts towards the mean.
    EXPECT_LT(max_abs_difference(g.sum_of_models(), sum_before), 1e-4);
  }
}

TEST(GossipStrategy, RingSyncStepIsWTimesX) {
  expect_sync_matches_serial(TopologyKind::kRing, 5, 0.0f);
  expect_sync_matches_serial(TopologyKind::kRing, 4, 0.1f);
}

TEST(GossipStrategy, OtherTopologiesSyncStepIsWTimesX) {
  expect_sync_matches_serial(TopologyKind::kExponential, 6, 0.1f);
  expect_sync_matches_serial(TopologyKind::kOnePeerExponential, 4, 0.1f);
  expect_sync_matches_serial(TopologyKind::kTorus, 6, 0.1f);
}

// CHOCO-SGD (compressed gossip) -------------------------------------------

CompressionSettings topk(double density) {
  CompressionSettings c;
  c.codec.method = compress::Method::kTopK;
  c.codec.density = density;
  c.codec.min_size = 16;  // fc1's weight (96) and fc2's (48) are compressed
  return c;
}

double consensus_distance_of(Group& g) {
  std::vector<std::vector<float>> xs;
  for (auto& w : g.workers) xs.push_back(w->own_parameters());
  std::vector<double> mean(xs[0].size(), 0.0);
  for (const auto& x : xs) {
    for (size_t k = 0; k < x.size(); ++k) mean[k] += x[k] / static_cast<double>(xs.size());
  }
  double d = 0.0;
  for (const auto& x : xs) {
    for (size_t k = 0; k < x.size(); ++k) d += (x[k] - mean[k]) * (x[k] - mean[k]);
  }
  return d / static_cast<double>(xs.size());
}

// Top-k at density 1 sends every entry exactly: with gamma_c = 1 and the
// copies starting at the common model, a CHOCO step is D-PSGD's W x.
TEST(GossipStrategy, ChocoLosslessStepIsWTimesX) {
  constexpr int kWorkers = 5, kSteps = 4;
  GossipOptions o;
  o.topology = TopologyKind::kRing;
  o.compression = topk(1.0);
  o.consensus_step = 1.0;
  Group g(kWorkers, o, plain_sgd(0.1f));
  std::vector<std::vector<float>> starts;
  for (auto& w : g.workers) starts.push_back(w->own_parameters());
  const Data data(kWorkers, 4, kSteps);
  g.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) g.workers[r]->train_step(data.x(s, r), data.y(s, r));
    g.workers[r]->finish();
  });
  const auto expected = serial_gossip(g.workers[0]->topology(), data, starts, kSteps, 0.1f);
  for (int r = 0; r < kWorkers; ++r) {
    EXPECT_LT(max_abs_difference(g.workers[r]->own_parameters(), expected[r]), 1e-6)
        << "worker " << r;
  }
}

// Before compression.start_step the messages are dense (exact) and gamma_c
// is 1: plain D-PSGD, whatever the codec.
TEST(GossipStrategy, ChocoBeforeStartStepIsPlainDPsgd) {
  constexpr int kWorkers = 4, kSteps = 3;
  GossipOptions o;
  o.compression = topk(0.01);
  o.compression->start_step = kSteps;
  o.consensus_step = 0.3;
  Group g(kWorkers, o, plain_sgd(0.1f));
  std::vector<std::vector<float>> starts;
  for (auto& w : g.workers) starts.push_back(w->own_parameters());
  const Data data(kWorkers, 4, kSteps);
  g.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) g.workers[r]->train_step(data.x(s, r), data.y(s, r));
    g.workers[r]->finish();
  });
  const auto expected = serial_gossip(g.workers[0]->topology(), data, starts, kSteps, 0.1f);
  for (int r = 0; r < kWorkers; ++r) {
    EXPECT_LT(max_abs_difference(g.workers[r]->own_parameters(), expected[r]), 1e-6)
        << "worker " << r;
  }
}

// With lr 0, CHOCO over a ring (W symmetric) keeps the sum of the models
// and brings them together; top-k 10%. The models first drift apart by
// training with lr 0.1 on different data.
void expect_choco_contracts(int n, double gamma) {
  GossipOptions o;
  o.compression = topk(0.1);
  o.consensus_step = gamma;
  Group g(n, o, plain_sgd(0.5f));
  constexpr int kDrift = 4, kMix = 60;
  const Data data(n, 4, kDrift);
  g.run([&](int r) {
    for (int s = 0; s < kDrift; ++s) g.workers[r]->train_step(data.x(s, r), data.y(s, r));
  });
  const double before = consensus_distance_of(g);
  ASSERT_GT(before, 0.0);
  const std::vector<float> sum_before = g.sum_of_models();
  std::vector<double> distances;
  for (int phase = 0; phase < 3; ++phase) {
    g.run([&](int r) {
      g.workers[r]->set_learning_rate(0.0f);
      for (int s = 0; s < kMix / 3; ++s) g.workers[r]->train_step(data.x(0, r), data.y(0, r));
      if (phase == 2) g.workers[r]->finish();
    });
    distances.push_back(consensus_distance_of(g));
    const std::vector<float> sum = g.sum_of_models();
    double worst = 0.0, scale = 0.0;
    for (size_t k = 0; k < sum.size(); ++k) {
      worst = std::max(worst, std::abs(double(sum[k]) - double(sum_before[k])));
      scale = std::max(scale, std::abs(double(sum_before[k])));
    }
    EXPECT_LT(worst, 1e-4 * scale) << n << " workers, after " << (phase + 1) * kMix / 3;
  }
  EXPECT_LT(distances[0], before) << n << " workers";
  EXPECT_LT(distances[1], distances[0]) << n << " workers";
  EXPECT_LT(distances[2], distances[1]) << n << " workers";
}

TEST(GossipStrategy, ChocoTopKKeepsTheSumAndReachesConsensus) {
  expect_choco_contracts(4, 0.5);
  expect_choco_contracts(6, 0.5);
}

// Bytes from the link: top-k 1% sends a small share of what dense gossip
// sends, and CHOCO's dense_bytes is what plain gossip sent.
TEST(GossipStrategy, ChocoTopKSendsFewerBytes) {
  constexpr int kWorkers = 4;
  const auto one_step = [&](std::optional<CompressionSettings> c) {
    GossipOptions o;
    o.compression = std::move(c);
    if (o.compression) o.compression->codec.min_size = 0;
    o.consensus_step = 0.5;
    Group g(kWorkers, o, plain_sgd(0.1f));
    const Data data(kWorkers, 4, 1);
    // The step alone: finish()'s calls would add to the link's count.
    g.run([&](int r) { g.workers[r]->train_step(data.x(0, r), data.y(0, r)); });
    const CommStats step = g.workers[1]->last_comm();
    g.run([&](int r) { g.workers[r]->finish(); });
    return step;
  };
  const CommStats dense = one_step(std::nullopt);
  const CommStats choco = one_step(topk(0.01));
  EXPECT_EQ(dense.bytes_sent, dense.dense_bytes);
  EXPECT_EQ(choco.dense_bytes, dense.bytes_sent);
  EXPECT_GT(dense.bytes_sent, 0u);
  EXPECT_LT(choco.bytes_sent * 3, dense.bytes_sent)
      << "choco " << choco.bytes_sent << " dense " << dense.bytes_sent;
}

// The refusals a spec cannot see (built in code, not from a job file).
TEST(GossipStrategy, ChocoRefusesAsyncDynamicTopologiesAndReplacements) {
  const auto refused = [](GossipOptions o, const std::string& what) {
    o.compression = topk(0.1);
    comm::InProcPeerHub hub(2);
    Lines log;
    testing::expect_error<UsageError>(
        [&] {
          GossipStrategy s(hub.link(0), mlp(), plain_sgd(0.1f), o, cross_entropy_loss(),
                           log.logger);
        },
        what);
  };
  GossipOptions async;
  async.mode = GossipMode::kAsync;
  refused(async, "gossip: compression (CHOCO-SGD) needs sync mode");
  GossipOptions one_peer;
  one_peer.topology = TopologyKind::kOnePeerExponential;
  refused(one_peer,
          "gossip: compression (CHOCO-SGD) needs a fixed topology, not one-peer-exponential");
  GossipOptions replacement;
  replacement.replacement = true;
  refused(replacement,
          "gossip: compression (CHOCO-SGD) cannot take a replacement worker: its neighbours' "
          "copies of its model would not match its own");
  GossipOptions zero;
  zero.consensus_step = 0.0;
  refused(zero, "gossip: consensus_step must be in (0, 1], got 0");
}

// AD-PSGD under random delays: every worker finishes (no deadlock, no
// TimeoutError within a generous deadline) and, with lr 0, the sum of the
// models is what it was (mass preservation).
TEST(GossipStrategy, AsyncNeverDeadlocksAndKeepsTheSumUnderRandomDelays) {
  constexpr int kSteps = 12;
  for (const int n : {4, 6}) {
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      SCOPED_TRACE(::testing::Message() << n << " workers, seed " << seed);
      GossipOptions o;
      o.mode = GossipMode::kAsync;
      o.topology = seed % 2 == 0 ? TopologyKind::kRing : TopologyKind::kExponential;
      o.seed = seed;
      o.consensus_every = 0;
      Group g(n, o, plain_sgd(0.0f));
      g.spread_starts(seed);
      const std::vector<float> sum_before = g.sum_of_models();
      auto rng = std::make_shared<std::mt19937_64>(seed);
      auto rng_mutex = std::make_shared<std::mutex>();
      g.hub.set_delay([rng, rng_mutex](int, int) {
        const std::lock_guard lock(*rng_mutex);
        return std::chrono::microseconds((*rng)() % 2000);
      });
      const Data data(n, 3, kSteps);
      std::atomic<int> finished = 0;
      // Every worker stops stepping before any leaves: a worker that left is
      // dropped by those still averaging (tested elsewhere), not here.
      std::barrier stepped(n);
      g.run([&](int r) {
        for (int s = 0; s < kSteps; ++s) g.workers[r]->train_step(data.x(s, r), data.y(s, r));
        ++finished;
        stepped.arrive_and_wait();
        g.workers[r]->finish();
      });
      EXPECT_EQ(finished.load(), n);
      for (int r = 0; r < n; ++r) {
        EXPECT_FALSE(g.logs[r]->contains("dropped")) << "worker " << r;
      }
      EXPECT_LT(max_abs_difference(g.sum_of_models(), sum_before), 1e-4);
    }
  }
}

TEST(GossipStrategy, AsyncAveragesMoveTowardsConsensus) {
  constexpr int kWorkers = 4, kSteps = 30;
  GossipOptions o;
  o.mode = GossipMode::kAsync;
  o.topology = TopologyKind::kRing;
  o.consensus_every = 0;
  Group g(kWorkers, o, plain_sgd(0.0f));
  g.spread_starts(5);
  g.workers[0]->fetch_model();
  const double before = *g.workers[0]->consensus_distance();
  const Data data(kWorkers, 3, kSteps);
  std::barrier stepped(kWorkers);
  g.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) g.workers[r]->train_step(data.x(s, r), data.y(s, r));
    stepped.arrive_and_wait();
    if (r == 0) g.workers[0]->fetch_model();
    g.workers[r]->finish();
  });
  EXPECT_LT(*g.workers[0]->consensus_distance(), 0.1 * before);
}

// Ring of 4, sync: worker 2 dies after kDie steps; its neighbours 1 and 3
// drop it (one line each), mix with the renormalised rows and go on.
TEST(GossipStrategy, ADeadNeighbourIsDroppedAndTheRowRenormalised) {
  constexpr int kWorkers = 4, kSteps = 8, kDie = 3;
  GossipOptions o;
  Group g(kWorkers, o);
  const Data data(kWorkers, 3, kSteps);
  g.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) {
      if (r == 2 && s == kDie) {
        g.hub.kill(2);
        return;
      }
      g.workers[r]->train_step(data.x(s, r), data.y(s, r));
    }
    // The chief's average (sync: of step kSteps) leaves the dead worker out.
    if (r == 0) g.workers[0]->fetch_model();
    g.workers[r]->finish();
  });
  std::vector<bool> alive(kWorkers, true);
  alive[2] = false;
  const Topology& topology = g.workers[0]->topology();
  for (const int r : {1, 3}) {
    EXPECT_TRUE(g.logs[r]->contains("worker 2 dropped from the mixing at step 3")) << r;
    const gossip::MixingRow expected = topology.row(r, kSteps - 1, alive);
    const gossip::MixingRow& got = g.workers[r]->last_row();
    EXPECT_DOUBLE_EQ(got.self, expected.self) << r;
    EXPECT_EQ(got.neighbours, expected.neighbours) << r;
    EXPECT_EQ(got.neighbours.size(), 1u);
    EXPECT_EQ(g.workers[r]->steps(), kSteps);
  }
  EXPECT_FALSE(g.logs[0]->contains("dropped"));
  EXPECT_EQ(g.workers[0]->last_row().neighbours.size(), 2u);
  EXPECT_EQ(g.workers[0]->consensus_workers(), 3);
}

// The other dead-worker paths: one-peer-exponential (sync) skips the dead
// worker to the next alive one of its cycle, AD-PSGD stops picking it; the
// others finish and every survivor keeps training.
TEST(GossipStrategy, ADeadWorkerIsSkippedByOnePeerAndByAsyncPartners) {
  constexpr int kWorkers = 4, kSteps = 10, kDie = 3;
  for (const GossipMode mode : {GossipMode::kSync, GossipMode::kAsync}) {
    SCOPED_TRACE(mode == GossipMode::kSync ? "sync" : "async");
    GossipOptions o;
    o.mode = mode;
    o.topology = TopologyKind::kOnePeerExponential;
    Group g(kWorkers, o);
    const Data data(kWorkers, 3, kSteps);
    // Worker 1 dies once everyone has taken kDie steps, and before anyone
    // takes another: the others' later steps (worker 0 picks worker 1 at
    // every even step of one-peer-exponential) must meet the dead worker,
    // whatever the threads' speeds (async workers run freely otherwise).
    std::barrier before_kill(kWorkers), after_kill(kWorkers);
    g.run([&](int r) {
      for (int s = 0; s < kSteps; ++s) {
        if (s == kDie) {
          before_kill.arrive_and_wait();
          if (r == 1) g.hub.kill(1);
          after_kill.arrive_and_wait();
          if (r == 1) return;
        }
        g.workers[r]->train_step(data.x(s, r), data.y(s, r));
      }
      g.workers[r]->finish();
    });
    bool someone_dropped_it = false;
    for (const int r : {0, 2, 3}) {
      EXPECT_EQ(g.workers[r]->steps(), kSteps) << r;
      someone_dropped_it = someone_dropped_it || g.logs[r]->contains("worker 1 dropped");
    }
    EXPECT_TRUE(someone_dropped_it);
  }
}

// A replacement for a dead worker copies a neighbour's model and step, and
// its neighbours mix it in again.
TEST(GossipStrategy, AReplacementJoinsWithANeighboursModel) {
  constexpr int kWorkers = 4, kSteps = 14, kDie = 3, kPause = 6;
  GossipOptions o;
  o.rejoin_wait = 2s;  // generous: the test expects the first possible re-mix
  Group g(kWorkers, o);
  const Data data(kWorkers, 3, kSteps);
  // The four worker threads and the one that starts the replacement.
  std::barrier paused(kWorkers + 1);
  std::barrier resumed(kWorkers + 1);
  Lines replacement_log;
  std::unique_ptr<GossipStrategy> replacement;
  std::jthread main_part([&] {
    paused.arrive_and_wait();
    const std::vector<float> neighbour = g.workers[1]->own_parameters();
    GossipOptions r = o;
    r.timeout = 20s;
    r.exit_grace = 0ms;
    r.replacement = true;
    replacement = std::make_unique<GossipStrategy>(g.hub.rejoin(2), mlp(), plain_sgd(0.1f), r,
                                                   cross_entropy_loss(), replacement_log.logger);
    EXPECT_EQ(replacement->own_parameters(), neighbour);
    resumed.arrive_and_wait();
  });
  g.run([&](int rank) {
    if (rank == 2) {
      for (int s = 0; s < kDie; ++s) g.workers[2]->train_step(data.x(s, 2), data.y(s, 2));
      g.hub.kill(2);
      paused.arrive_and_wait();
      resumed.arrive_and_wait();
      GossipStrategy& w = *replacement;
      for (int s = static_cast<int>(*w.joined_at_step()); s < kSteps; ++s) {
        w.train_step(data.x(s, 2), data.y(s, 2));
      }
      w.finish();
      return;
    }
    for (int s = 0; s < kSteps; ++s) {
      if (s == kPause) {
        paused.arrive_and_wait();
        resumed.arrive_and_wait();
      }
      g.workers[rank]->train_step(data.x(s, rank), data.y(s, rank));
    }
    g.workers[rank]->finish();
  });
  main_part.join();
  ASSERT_NE(replacement, nullptr);
  ASSERT_TRUE(replacement->joined_at_step().has_value());
  EXPECT_EQ(*replacement->joined_at_step(), kPause);
  EXPECT_TRUE(replacement_log.contains("worker 2 joined at step 6 with worker 1's model"));
  EXPECT_EQ(replacement->steps(), kSteps);
  for (const int r : {1, 3}) {
    EXPECT_TRUE(g.logs[r]->contains("worker 2 is mixed in again")) << r;
    EXPECT_EQ(g.workers[r]->last_row().neighbours.size(), 2u) << r;
  }
  EXPECT_EQ(replacement->last_row().neighbours.size(), 2u);
}

TEST(GossipStrategy, AReplacementStartsFromTheNeighboursModel) {
  GossipOptions o;
  Group g(3, o);
  g.spread_starts(9);
  g.hub.kill(2);
  GossipOptions r = o;
  r.timeout = 20s;
  r.replacement = true;
  Lines log;
  GossipStrategy replacement(g.hub.rejoin(2), mlp(), plain_sgd(0.1f), r, cross_entropy_loss(),
                             log.logger);
  // Ring of 3: worker 2's in-neighbours are 0 and 1; it asks 0 first.
  EXPECT_EQ(replacement.own_parameters(), g.workers[0]->own_parameters());
  EXPECT_EQ(flat(replacement.model()), g.workers[0]->own_parameters());
  EXPECT_EQ(replacement.joined_at_step(), 0);
}

TEST(GossipStrategy, ChiefAveragesTheModelsAndMeasuresTheConsensusDistance) {
  constexpr int kWorkers = 3;
  GossipOptions o;
  Group g(kWorkers, o);
  g.spread_starts(4);
  std::vector<std::vector<float>> x;
  for (auto& w : g.workers) x.push_back(w->own_parameters());
  g.workers[0]->fetch_model();
  const size_t size = x[0].size();
  std::vector<double> mean(size, 0.0);
  for (const auto& xi : x) {
    for (size_t k = 0; k < size; ++k) mean[k] += xi[k] / 3.0;
  }
  double distance = 0.0;
  for (const auto& xi : x) {
    for (size_t k = 0; k < size; ++k) distance += (xi[k] - mean[k]) * (xi[k] - mean[k]) / 3.0;
  }
  EXPECT_NEAR(*g.workers[0]->consensus_distance(), distance, 1e-9 * distance);
  EXPECT_LT(
      max_abs_difference(flat(g.workers[0]->model()), std::vector<float>(mean.begin(), mean.end())),
      1e-6);
  const auto metrics = g.workers[0]->report_metrics();
  ASSERT_EQ(metrics.size(), 2u);
  EXPECT_EQ(metrics[0].first, "consensus_distance");
  EXPECT_DOUBLE_EQ(metrics[0].second, *g.workers[0]->consensus_distance());
  EXPECT_EQ(metrics[1], (std::pair<std::string, double>{"gossip_workers", 3.0}));
  EXPECT_TRUE(g.workers[0]->report_metrics().empty());  // nothing new since
  const auto extra = g.workers[0]->extra_eval_models();
  ASSERT_EQ(extra.size(), 1u);
  EXPECT_EQ(extra[0].first, "worker0");
  EXPECT_EQ(flat(*extra[0].second), x[0]);
}

TEST(GossipStrategy, ConsensusIsMeasuredEveryKSteps) {
  constexpr int kWorkers = 3, kSteps = 4;
  GossipOptions o;
  o.consensus_every = 2;
  Group g(kWorkers, o);
  const Data data(kWorkers, 3, kSteps);
  std::vector<size_t> reports;
  g.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) {
      g.workers[r]->train_step(data.x(s, r), data.y(s, r));
      if (r == 0) reports.push_back(g.workers[0]->report_metrics().size());
    }
    g.workers[r]->finish();
  });
  EXPECT_EQ(reports, (std::vector<size_t>{0, 2, 0, 2}));
}

// A worker's finish() returns only once the chief has its final model (the
// chief's kDone), so that the chief's last fetch_model() finds it.
TEST(GossipStrategy, WorkersFinishAfterTheChiefsFinalFetch) {
  constexpr int kWorkers = 3, kSteps = 3;
  GossipOptions o;
  Group g(kWorkers, o);
  const Data data(kWorkers, 3, kSteps);
  std::atomic<bool> fetched = false;
  g.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) g.workers[r]->train_step(data.x(s, r), data.y(s, r));
    if (r == 0) {
      g.workers[0]->fetch_model();
      fetched = true;
    }
    g.workers[r]->finish();
    EXPECT_TRUE(fetched.load()) << "worker " << r << " finished before the chief's fetch";
  });
  EXPECT_EQ(g.workers[0]->consensus_workers(), kWorkers);
}

// A checkpoint's optimizer state carries the step count; a resumed worker
// counts on from it (so a replacement after a resume joins at the trainer's
// step), and the workers, all resumed alike, keep gossiping in step.
TEST(GossipStrategy, TheStepCountResumesWithTheOptimizerState) {
  constexpr int kWorkers = 2, kSteps = 3;
  GossipOptions o;
  Group first(kWorkers, o);
  const Data data(kWorkers, 3, 2 * kSteps);
  first.run([&](int r) {
    for (int s = 0; s < kSteps; ++s) first.workers[r]->train_step(data.x(s, r), data.y(s, r));
    first.workers[r]->finish();
  });
  const StateDict state = first.workers[0]->optimizer_state();
  EXPECT_EQ(state.metadata().at("gossip.steps"), "3");
  Group resumed(kWorkers, o);
  resumed.run([&](int r) {
    resumed.workers[r]->load_optimizer_state(state);
    EXPECT_EQ(resumed.workers[r]->steps(), kSteps);
    for (int s = kSteps; s < 2 * kSteps; ++s) {
      resumed.workers[r]->train_step(data.x(s, r), data.y(s, r));
    }
    resumed.workers[r]->finish();
  });
  EXPECT_EQ(resumed.workers[1]->steps(), 2 * kSteps);
  StateDict bad = state;
  bad.metadata()["gossip.steps"] = "three";
  testing::expect_error<UsageError>(
      [&] { resumed.workers[0]->load_optimizer_state(bad); },
      "gossip: optimizer state metadata 'gossip.steps' is 'three', expected a step count");
}

TEST(GossipStrategy, APayloadOfTheWrongSizeIsADataErrorNamingThePeer) {
  comm::InProcPeerHub hub(2);
  GossipOptions o;
  o.timeout = 20s;
  GossipStrategy worker(hub.link(0), mlp(), plain_sgd(0.1f), o, cross_entropy_loss(),
                        Logger::null());
  auto other = hub.link(1);
  const std::vector<std::byte> junk(12);
  other->post(0, GossipStrategy::kModelChannel, 0, junk, "junk", Deadline::after(5s));
  const Data data(2, 3, 1);
  try {
    worker.train_step(data.x(0, 0), data.y(0, 0));
    ADD_FAILURE() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("worker 1 sent 12 bytes of parameters"), std::string::npos)
        << e.what();
  }
}

// --- the spec ---

class MapTable final : public ConfigTable {
 public:
  explicit MapTable(std::map<std::string, std::string> values)
      : values_(std::move(values)), lines_("job.toml", "distributed.gossip", 0) {}
  bool read(std::string_view key, bool& out) override {
    return get(key, [&](const std::string& v) { out = v == "true"; });
  }
  bool read(std::string_view key, int64_t& out) override {
    return get(key, [&](const std::string& v) { out = std::stoll(v); });
  }
  bool read(std::string_view key, double& out) override {
    return get(key, [&](const std::string& v) { out = std::stod(v); });
  }
  bool read(std::string_view key, std::string& out) override {
    return get(key, [&](const std::string& v) { out = v; });
  }
  bool read(std::string_view key, std::vector<std::string>& out) override {
    return get(key, [&](const std::string& v) { out = {v}; });
  }
  const KeyLines& lines() const override { return lines_; }

 private:
  template <typename F>
  bool get(std::string_view key, F&& set) {
    const auto it = values_.find(std::string(key));
    if (it == values_.end()) return false;
    set(it->second);
    lines_.add(key, 4);
    return true;
  }
  std::map<std::string, std::string> values_;
  KeyLines lines_;
};

std::unique_ptr<StrategySpec> gossip_spec(std::map<std::string, std::string> values) {
  auto spec = make_strategy_spec("gossip", KeyLines(), "strategy");
  MapTable table(std::move(values));
  spec->read_options(table);
  return spec;
}

JobFacts facts(int64_t workers) {
  JobFacts f;
  f.workers = workers;
  f.where = KeyLines("job.toml", "", 0);
  return f;
}

TEST(GossipSpec, ReadsAndChecksItsOptions) {
  EXPECT_NO_THROW(gossip_spec(
      {{"mode", "async"}, {"topology", "one-peer-exponential"}, {"consensus_every", "0"}}));
  for (const std::string& kind : gossip::topology_names()) {
    EXPECT_NO_THROW(gossip_spec({{"topology", kind}})) << kind;
  }
  testing::expect_error<ConfigError>(
      [] {
        gossip_spec({{"topology", "star"}});
      },
      "job.toml:4: 'distributed.gossip.topology': 'star' is not one of: ring, torus, full, "
      "exponential, one-peer-exponential");
  EXPECT_THROW(gossip_spec({{"mode", "ssp"}}), ConfigError);
  testing::expect_error<ConfigError>(
      [] {
        gossip_spec({{"consensus_every", "-1"}});
      },
      "job.toml:4: 'distributed.gossip.consensus_every': must be 0 (only at evaluations) or "
      "more, got -1");
}

TEST(GossipSpec, RefusesWhatDoesNotApply) {
  const auto spec = gossip_spec({});
  std::vector<std::string> warnings;
  JobFacts f = facts(4);
  EXPECT_NO_THROW(spec->validate(f, warnings));
  const auto refused = [&](JobFacts job, const std::string& key) {
    try {
      spec->validate(job, warnings);
      ADD_FAILURE() << "expected a ConfigError naming " << key;
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.key(), key) << e.what();
    }
  };
  JobFacts elastic = f;
  elastic.elastic = true;
  refused(elastic, "train.elastic");
  JobFacts dynamic = f;
  dynamic.dynamic_batch = true;
  refused(dynamic, "distributed.dynamic_batch");
  JobFacts local_sgd = f;
  local_sgd.local_sgd = true;
  refused(local_sgd, "compression.local_steps");
  JobFacts guard = f;
  guard.guard = true;
  refused(guard, "compression.guard");
  JobFacts min_workers = f;
  min_workers.min_workers = 5;
  refused(min_workers, "train.min_workers");
}

TEST(GossipSpec, ChocoCompressionOnlyInSyncModeOnFixedTopologiesWithoutRestarts) {
  std::vector<std::string> warnings;
  JobFacts compressed = facts(4);
  compressed.compression = true;
  EXPECT_NO_THROW(gossip_spec({})->validate(compressed, warnings));
  EXPECT_NO_THROW(gossip_spec({{"topology", "torus"}, {"consensus_step", "0.2"}})
                      ->validate(compressed, warnings));
  const auto refused = [&](std::map<std::string, std::string> options, const JobFacts& job,
                           const std::string& key) {
    const auto spec = gossip_spec(std::move(options));
    try {
      spec->validate(job, warnings);
      ADD_FAILURE() << "expected a ConfigError naming " << key;
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.key(), key) << e.what();
    }
  };
  refused({{"mode", "async"}}, compressed, "distributed.gossip.mode");
  refused({{"topology", "one-peer-exponential"}}, compressed, "distributed.gossip.topology");
  JobFacts restarts = compressed;
  restarts.max_restarts = 2;
  refused({}, restarts, "train.max_restarts");
  // Without compression these stay allowed.
  JobFacts plain = facts(4);
  plain.max_restarts = 2;
  EXPECT_NO_THROW(gossip_spec({{"mode", "async"}})->validate(plain, warnings));
  EXPECT_NO_THROW(gossip_spec({{"topology", "one-peer-exponential"}})->validate(plain, warnings));
  for (const std::string bad : {"0", "1.5", "-0.1"}) {
    EXPECT_THROW(gossip_spec({{"consensus_step", bad}}), ConfigError) << bad;
  }
  EXPECT_NO_THROW(gossip_spec({{"consensus_step", "1"}}));
  compress::Options codec;
  codec.method = compress::Method::kFp16;
  EXPECT_EQ(default_consensus_step(codec), 1.0);
  codec.method = compress::Method::kTopK;
  codec.density = 0.01;
  EXPECT_DOUBLE_EQ(default_consensus_step(codec), 0.05);
  codec.density = 0.2;
  EXPECT_EQ(default_consensus_step(codec), 0.5);
  codec.method = compress::Method::kQsgd;
  EXPECT_EQ(default_consensus_step(codec), 0.5);
}

TEST(GossipSpec, PlansOneReplaceableProcessPerWorker) {
  const auto spec = gossip_spec({});
  EXPECT_FALSE(spec->multi_process(facts(1)));
  EXPECT_TRUE(spec->multi_process(facts(4)));
  JobFacts f = facts(4);
  const ProcessPlan p = spec->plan(f);
  EXPECT_EQ(p.processes, 4);
  EXPECT_EQ(p.servers, 0);
  EXPECT_TRUE(p.replace_failed);
  EXPECT_EQ(p.min_workers, 1);
  EXPECT_EQ(p.essential_slots, 1);
  EXPECT_EQ(p.slot_name(2), "worker 2");
  f.min_workers = 3;
  EXPECT_EQ(spec->plan(f).min_workers, 3);
}

}  // namespace
}  // namespace dtrain::strategy
