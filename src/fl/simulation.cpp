#include "fl/simulation.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "core/error.h"
#include "fl/flat_model.h"
#include "fl/private_update.h"
#include "fl/round_accountant.h"
#include "fl/sampling.h"
#include "fl/server_optimizer.h"
#include "fl/update.h"
#include "fl/upload_codec.h"
#include "privacy/secagg_round.h"

namespace dtrain::fl {

namespace {

using Clock = std::chrono::steady_clock;

// One client's work in a round: train `client` for at most `max_steps` steps.
struct ClientTask {
  int64_t client = 0;
  int64_t max_steps = std::numeric_limits<int64_t>::max();
  std::optional<ClientUpdate> update;
  int64_t correct = 0;        // client_eval: the global model's hits on the client's data
  uint64_t upload_bytes = 0;  // the update's message (compressed uploads)
};

// Replaces the update's delta by what its upload message decodes to and
// records the message's size. A delta the codec refuses (a non-finite value)
// is left as it is, for the aggregator to reject and count.
void upload(ClientTask& task, const UploadCodec& codec, int64_t round) {
  ClientUpdate& update = *task.update;
  if (update.samples == 0) return;
  std::vector<std::byte> message;
  try {
    message = codec.encode(update.delta, round, task.client);
  } catch (const DataError&) {
    return;
  }
  task.upload_bytes = message.size();
  const auto size = static_cast<int64_t>(update.delta.size());
  update.delta =
      codec.decode(message, size, fmt::format("update of client {}, round {}", task.client, round));
}

// Sets OpenBLAS to one thread while alive and restores the previous count:
// each client's computation is then single-threaded, so its floating-point
// results do not depend on how many simulation threads run beside it.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~SingleThreadedBlas() { openblas_set_num_threads(previous_); }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

LocalTraining local_training(const SimulationOptions& options) {
  const FlConfig& c = options.config;
  LocalTraining t;
  t.epochs = c.local_epochs;
  t.batch = c.local_batch;
  if (c.algorithm == "fedsgd") {  // one full-batch gradient step (McMahan et al. 2017)
    t.epochs = 1;
    t.batch = 0;
  }
  t.proximal_mu = c.proximal_mu;
  t.optimizer = options.client_optimizer;
  return t;
}

int64_t thread_count(const FlConfig& config, int64_t per_round) {
  int64_t threads = config.threads;
  if (threads <= 0) threads = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return std::clamp<int64_t>(threads, 1, per_round);
}

void check_options(const SimulationOptions& o) {
  const FlConfig& c = o.config;
  if (o.train == nullptr) throw UsageError("run_simulation: no training dataset");
  if (!o.make_model) throw UsageError("run_simulation: no model factory");
  if (c.clients < 1 || c.rounds < 0) {
    throw UsageError(fmt::format("run_simulation: {} clients and {} rounds", c.clients, c.rounds));
  }
  if (static_cast<int64_t>(o.parts.size()) != c.clients) {
    throw UsageError(
        fmt::format("run_simulation: {} data parts for {} clients", o.parts.size(), c.clients));
  }
  if (c.secure_aggregation && o.upload.method != compress::Method::kNone) {
    // A masked input is a dense vector of Z_(2^32): compressing it is moot.
    throw UsageError(
        "run_simulation: compressed uploads cannot be combined with "
        "fl.secure_aggregation (the masked inputs are dense)");
  }
}

bool due(int64_t round, int64_t every, int64_t last) {
  return round == last || (every > 0 && round % every == 0);
}

// Trains every task on `trainers.size()` threads, each pulling the next task
// from a shared index. The first exception stops the others from taking new
// tasks and is rethrown once all have joined.
void train_clients(std::vector<ClientTask>& tasks, std::vector<ClientTrainer>& trainers,
                   const SimulationOptions& o, const LocalTraining& training,
                   const UploadCodec* codec, std::span<const float> global, int64_t round) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&](ClientTrainer& trainer) {
    try {
      for (size_t i = next.fetch_add(1); i < tasks.size() && !failed.load();
           i = next.fetch_add(1)) {
        ClientTask& task = tasks[i];
        const std::vector<int64_t>& indices = o.parts[static_cast<size_t>(task.client)];
        if (o.config.client_eval) task.correct = trainer.count_correct(global, indices);
        LocalTraining mine = training;
        mine.max_steps = task.max_steps;
        Rng rng = client_rng(o.seed, round, task.client);
        task.update = trainer.train(task.client, round, global, indices, mine, rng);
        if (codec != nullptr) upload(task, *codec, round);
      }
    } catch (...) {
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      failed.store(true);
    }
  };
  if (trainers.size() == 1) {
    work(trainers.front());
  } else {
    std::vector<std::jthread> pool;
    pool.reserve(trainers.size());
    for (ClientTrainer& trainer : trainers) pool.emplace_back([&work, &trainer] { work(trainer); });
  }  // the pool joins here
  if (error) std::rethrow_exception(error);
}

// A private round's aggregate (fl/private_update.h): what the server side
// gets back, and nothing else.
struct PrivateAggregate {
  bool ok = false;
  std::string failure;
  std::vector<float> mean;        // when ok: the mean delta to apply
  std::vector<int64_t> included;  // the clients in the sum, ascending
  std::vector<int64_t> rejected;  // updates the clients themselves withheld
  uint64_t bytes_up = 0;
  double train_loss = std::numeric_limits<double>::quiet_NaN();
};

// Whether a client sends `update` at all: it has data, the model's size,
// and finite values (a client does not mask garbage into a secure sum).
bool sendable(const ClientUpdate& update, int64_t model_size) {
  if (update.samples <= 0 || static_cast<int64_t>(update.delta.size()) != model_size) return false;
  return std::all_of(update.delta.begin(), update.delta.end(),
                     [](float v) { return std::isfinite(v); });
}

// The clients' side of a private round: each trained update turned into its
// input (secagg_input) and given up; `slot` i is sampled[i]. A client that
// sends nothing (no data, a withheld update, a drop before advertising) is a
// zero input that drops before advertising.
struct ClientInputs {
  std::vector<std::vector<float>> inputs;
  std::vector<double> weights;  // public: the n_k
  std::vector<double> losses;   // non-secure rounds only
  std::map<uint32_t, privacy::SecAggDrop> drops;
  std::vector<int64_t> rejected;  // updates the clients themselves withheld
};

ClientInputs client_inputs(std::vector<ClientTask>& tasks,
                           const std::map<int64_t, privacy::SecAggDrop>& drop_points,
                           const std::vector<int64_t>& sampled, const SimulationOptions& o,
                           int64_t round, int64_t model_size, double mean_samples) {
  const auto m = static_cast<int64_t>(sampled.size());
  ClientInputs in;
  in.inputs.resize(static_cast<size_t>(m));
  in.weights.assign(static_cast<size_t>(m), 0.0);
  in.losses.assign(static_cast<size_t>(m), 0.0);
  for (ClientTask& task : tasks) {
    const auto slot = static_cast<size_t>(
        std::lower_bound(sampled.begin(), sampled.end(), task.client) - sampled.begin());
    ClientUpdate update = std::move(*task.update);
    task.update.reset();
    if (!sendable(update, model_size)) {
      if (update.samples > 0) in.rejected.push_back(task.client);
      continue;
    }
    Rng noise = client_noise_rng(o.seed, round, task.client);
    in.inputs[slot] = secagg_input(update, o.config, m, mean_samples, noise);
    in.weights[slot] = client_weight(o.config, update.samples, mean_samples);
    in.losses[slot] = update.loss;
    const auto d = drop_points.find(task.client);
    if (d != drop_points.end()) in.drops[static_cast<uint32_t>(slot)] = d->second;
  }
  for (size_t i = 0; i < in.inputs.size(); ++i) {
    if (in.inputs[i].empty()) {
      in.inputs[i].assign(static_cast<size_t>(model_size), 0.0F);  // never sent
      in.drops[static_cast<uint32_t>(i)] = privacy::SecAggDrop::kBeforeAdvertise;
    }
  }
  return in;
}

// The private aggregation of one round: client_inputs(), then only the
// inputs (masked, with secure aggregation: the server side sees
// run_secagg_round's unmasked sum) are used.
// `drop_points`: clients that drop in the middle of the secure protocol.
PrivateAggregate aggregate_privately(std::vector<ClientTask>& tasks,
                                     const std::map<int64_t, privacy::SecAggDrop>& drop_points,
                                     const std::vector<int64_t>& sampled,
                                     const SimulationOptions& o, int64_t round, int64_t model_size,
                                     double mean_samples) {
  const FlConfig& c = o.config;
  const auto m = static_cast<int64_t>(sampled.size());
  PrivateAggregate out;
  ClientInputs in = client_inputs(tasks, drop_points, sampled, o, round, model_size, mean_samples);
  std::vector<std::vector<float>>& inputs = in.inputs;
  const std::vector<double>& weights = in.weights;
  const std::vector<double>& losses = in.losses;
  const std::map<uint32_t, privacy::SecAggDrop>& drops = in.drops;
  out.rejected = std::move(in.rejected);
  // --- server's side ---
  Rng server_rng = server_noise_rng(o.seed, round);
  std::vector<float> sum;
  std::vector<size_t> included_slots;
  if (c.secure_aggregation) {
    const privacy::SecAggConfig sc =
        secagg_config(c, m, o.seed, round, static_cast<uint64_t>(model_size));
    privacy::SecAggRoundOptions ro;
    ro.round = sc.round;
    ro.threshold = sc.threshold;
    ro.graph = sc.graph;
    ro.degree = sc.degree;
    ro.clip = sc.clip;
    ro.seed = sc.graph_seed;
    const privacy::SecAggRoundResult r = privacy::run_secagg_round(inputs, ro, drops);
    inputs.clear();  // the clients are done
    out.bytes_up = r.stats.server_bytes_received;
    if (!r.ok) {
      out.failure = r.failure;
      return out;
    }
    sum = r.sum;
    for (const uint32_t i : r.included) included_slots.push_back(i);
  } else {  // DP without secure aggregation: the server sums the clipped inputs
    std::vector<double> acc(static_cast<size_t>(model_size), 0.0);
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (drops.contains(static_cast<uint32_t>(i))) continue;
      for (size_t j = 0; j < acc.size(); ++j) acc[j] += inputs[i][j];
      included_slots.push_back(i);
    }
    sum.assign(acc.begin(), acc.end());
    out.bytes_up = static_cast<uint64_t>(included_slots.size() * acc.size() * sizeof(float));
    double loss = 0.0;
    for (const size_t i : included_slots) loss += losses[i];
    if (!included_slots.empty()) out.train_loss = loss / static_cast<double>(included_slots.size());
  }
  if (included_slots.empty()) {
    out.failure = "no update reached the server";
    return out;
  }
  double included_weight = 0.0;
  for (const size_t i : included_slots) {
    included_weight += weights[i];
    out.included.push_back(sampled[i]);
  }
  out.mean = secagg_output(sum, c, m, static_cast<int64_t>(included_slots.size()), included_weight,
                           server_rng);
  out.ok = true;
  return out;
}

// One run: the state kept between rounds, and a round's steps (plan the
// fates, train, aggregate privately or plainly, evaluate and report).
class Simulation {
 public:
  explicit Simulation(const SimulationOptions& o)
      : o_(o),
        config_(o.config),
        training_(local_training(o)),
        trainers_(make_trainers(o)),
        model_size_(flat_size(trainers_.front().model())),
        model_bytes_(static_cast<uint64_t>(model_size_) * sizeof(float)),
        server_(config_.server_optimizer, model_size_),
        accountant_(config_, o.resume ? o.resume->round : 0,
                    o.resume ? o.resume->accountant : ServerState{}.accountant, "run_simulation"),
        mean_samples_(static_cast<double>(o.train->size()) / static_cast<double>(config_.clients)) {
    if (o.upload.method != compress::Method::kNone) {
      codec_.emplace(o.upload, layouts_of(trainers_.front().model()));
    }
    ServerState& state = result_.state;
    if (!o.resume) {
      state.weights = flatten(trainers_.front().model());
      return;
    }
    if (static_cast<int64_t>(o.resume->weights.size()) != model_size_) {
      throw UsageError(fmt::format("run_simulation: the resume state has {} weights, the model {}",
                                   o.resume->weights.size(), model_size_));
    }
    state.round = o.resume->round;
    state.weights = o.resume->weights;
    state.rejected_updates = o.resume->rejected_updates;
    state.accountant = o.resume->accountant;
    server_.load_state_dict(o.resume->optimizer);
  }

  SimulationResult run() {
    ServerState& state = result_.state;
    const double dp_q = config_.dp_sampling_rate();
    for (int64_t round = state.round + 1; round <= config_.rounds; ++round) {
      if (std::optional<std::string> stop = accountant_.budget_stop(round, dp_q)) {
        result_.budget_exhausted = true;
        result_.budget_stop = std::move(*stop);
        break;
      }
      const auto start = Clock::now();
      RoundReport report;
      report.round = round;
      report.sampled = sample_clients(config_.clients, config_.clients_per_round(), o_.seed, round);
      RoundPlan plan = plan_round(round, report.sampled);
      {
        const SingleThreadedBlas single;
        train_clients(plan.tasks, trainers_, o_, training_, codec_ ? &*codec_ : nullptr,
                      state.weights, round);
      }
      if (config_.secure_aggregation || config_.dp()) {
        close_private(round, plan, report);
      } else {
        close_plain(round, plan, report);
      }
      state.rejected_updates += report.rejected;
      state.round = round;
      report.bytes_down = static_cast<uint64_t>(report.sampled.size()) * model_bytes_;
      if (conclude(round, report, start)) {
        result_.reached_target = true;
        break;
      }
    }
    state.optimizer = server_.state_dict();
    return std::move(result_);
  }

 private:
  // Who trains in a round, and for how long.
  struct RoundPlan {
    std::vector<ClientTask> tasks;
    std::vector<int64_t> not_trained;
    std::map<int64_t, privacy::SecAggDrop> drop_points;  // secure rounds: drops mid-protocol
  };

  static std::vector<ClientTrainer> make_trainers(const SimulationOptions& o) {
    std::vector<ClientTrainer> trainers;
    const int64_t threads = thread_count(o.config, o.config.clients_per_round());
    trainers.reserve(static_cast<size_t>(threads));
    for (int64_t t = 0; t < threads; ++t) trainers.emplace_back(o.make_model, *o.train);
    return trainers;
  }

  RoundPlan plan_round(int64_t round, const std::vector<int64_t>& sampled) const {
    RoundPlan plan;
    for (int64_t k : sampled) {
      const ClientFate fate = client_fate(config_, o_.seed, round, k);
      if (fate == ClientFate::kDropped) {
        const privacy::SecAggDrop point = config_.secure_aggregation
                                              ? secagg_drop_point(o_.seed, round, k)
                                              : privacy::SecAggDrop::kBeforeAdvertise;
        if (point == privacy::SecAggDrop::kBeforeAdvertise) {
          plan.not_trained.push_back(k);
          continue;
        }
        plan.drop_points[k] = point;  // trains, then leaves the protocol at `point`
      }
      ClientTask task;
      task.client = k;
      if (fate == ClientFate::kStraggler) {
        if (!config_.accepts_partial_work()) {  // late, and its work would be thrown away
          plan.not_trained.push_back(k);
          continue;
        }
        const auto samples = static_cast<int64_t>(o_.parts[static_cast<size_t>(k)].size());
        task.max_steps =
            straggler_steps(local_steps(samples, training_), config_.straggler_slowdown);
      }
      plan.tasks.push_back(std::move(task));
    }
    return plan;
  }

  // The global model's accuracy on the aggregated clients' own data.
  void client_accuracy(RoundReport& report, int64_t correct, int64_t samples) const {
    if (config_.client_eval && samples > 0) {
      report.client_accuracy = static_cast<double>(correct) / static_cast<double>(samples);
    }
  }

  void close_private(int64_t round, RoundPlan& plan, RoundReport& report) {
    std::vector<int64_t>& not_trained = plan.not_trained;
    std::map<int64_t, std::pair<int64_t, bool>> meta;  // client -> (correct, partial)
    for (const ClientTask& task : plan.tasks) {
      if (task.update && task.update->samples == 0) not_trained.push_back(task.client);
      if (task.update) meta[task.client] = {task.correct, task.update->partial};
    }
    PrivateAggregate agg = aggregate_privately(plan.tasks, plan.drop_points, report.sampled, o_,
                                               round, model_size_, mean_samples_);
    report.secure = config_.secure_aggregation;
    report.rejected = static_cast<int64_t>(agg.rejected.size());
    report.failure = agg.failure;
    report.failed = !agg.ok || static_cast<int64_t>(agg.included.size()) <
                                   std::max<int64_t>(1, config_.min_fit_clients);
    if (agg.ok && report.failed) {
      report.failure = fmt::format("{} updates in the sum, fewer than fl.min_fit_clients = {}",
                                   agg.included.size(), config_.min_fit_clients);
    }
    if (!report.failed) {
      server_.apply(result_.state.weights, agg.mean);
      accountant_.step(config_.dp_sampling_rate());
      report.participated = agg.included;
    }
    for (const int64_t k : report.sampled) {
      if (!std::binary_search(report.participated.begin(), report.participated.end(), k) &&
          std::find(not_trained.begin(), not_trained.end(), k) == not_trained.end()) {
        not_trained.push_back(k);
      }
    }
    int64_t eval_correct = 0;
    int64_t eval_samples = 0;
    for (const int64_t k : report.participated) {
      const auto& [correct, partial] = meta[k];
      if (partial) report.partial.push_back(k);
      eval_correct += correct;
      eval_samples += static_cast<int64_t>(o_.parts[static_cast<size_t>(k)].size());
    }
    std::sort(not_trained.begin(), not_trained.end());
    report.dropped = std::move(not_trained);
    report.train_loss = agg.train_loss;
    report.bytes_up = agg.bytes_up;
    accountant_.record(report, result_.state);
    client_accuracy(report, eval_correct, eval_samples);
  }

  // Aggregation in client-id order (the tasks follow the ascending sample).
  void close_plain(int64_t round, RoundPlan& plan, RoundReport& report) {
    std::vector<int64_t>& not_trained = plan.not_trained;
    RoundAggregator aggregator(round, config_.clients, model_size_, report.sampled);
    int64_t eval_correct = 0;
    int64_t eval_samples = 0;
    uint64_t bytes_up = 0;
    for (ClientTask& task : plan.tasks) {
      ClientUpdate& update = *task.update;
      if (update.samples == 0) {  // no data: nothing to send
        not_trained.push_back(task.client);
        continue;
      }
      const bool partial = update.partial;
      const int64_t samples = update.samples;
      if (aggregator.add(std::move(update))) {
        ++report.rejected;
        not_trained.push_back(task.client);
        continue;
      }
      if (partial) report.partial.push_back(task.client);
      bytes_up += codec_ ? task.upload_bytes : model_bytes_;
      eval_correct += task.correct;
      eval_samples += samples;
    }
    std::sort(not_trained.begin(), not_trained.end());
    report.dropped = std::move(not_trained);
    report.participated = aggregator.accepted_clients();
    report.train_loss = aggregator.mean_loss();
    report.failed = aggregator.accepted() < std::max<int64_t>(1, config_.min_fit_clients);
    if (!report.failed) server_.apply(result_.state.weights, aggregator.mean_delta());
    report.bytes_up = bytes_up;
    client_accuracy(report, eval_correct, eval_samples);
  }

  // Evaluates, reports and checkpoints the round; whether it reached the
  // target (then it is the last).
  bool conclude(int64_t round, RoundReport& report, Clock::time_point start) {
    ServerState& state = result_.state;
    if (o_.evaluate && due(round, config_.eval_every, config_.rounds)) {
      report.test = o_.evaluate(state.weights);
      result_.last_test = report.test;
    }
    const bool stop = config_.target_accuracy > 0.0 && report.test.has_value() &&
                      report.test->accuracy >= config_.target_accuracy;
    report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (o_.on_round) o_.on_round(report);
    if (o_.on_checkpoint && config_.checkpoint_every > 0 &&
        (stop || due(round, config_.checkpoint_every, config_.rounds))) {
      state.optimizer = server_.state_dict();
      o_.on_checkpoint(state);
    }
    return stop;
  }

  const SimulationOptions& o_;
  const FlConfig& config_;
  const LocalTraining training_;
  std::vector<ClientTrainer> trainers_;
  const int64_t model_size_;
  const uint64_t model_bytes_;
  std::optional<UploadCodec> codec_;
  SimulationResult result_;
  ServerOptimizer server_;
  RoundAccountant accountant_;
  const double mean_samples_;
};

}  // namespace

SimulationResult run_simulation(const SimulationOptions& o) {
  check_options(o);
  return Simulation(o).run();
}

}  // namespace dtrain::fl
