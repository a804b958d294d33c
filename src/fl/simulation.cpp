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

// The private aggregation of one round. The clients' side (the first loop)
// turns each trained update into its input (secagg_input) and drops the
// update; below it only the inputs (masked, with secure aggregation: the
// server side sees run_secagg_round's unmasked sum) are used.
// `drop_points`: clients that drop in the middle of the secure protocol.
PrivateAggregate aggregate_privately(std::vector<ClientTask>& tasks,
                                     const std::map<int64_t, privacy::SecAggDrop>& drop_points,
                                     const std::vector<int64_t>& sampled,
                                     const SimulationOptions& o, int64_t round, int64_t model_size,
                                     double mean_samples) {
  const FlConfig& c = o.config;
  const auto m = static_cast<int64_t>(sampled.size());
  PrivateAggregate out;
  // --- clients' side ---
  std::vector<std::vector<float>> inputs(static_cast<size_t>(m));
  std::vector<double> weights(static_cast<size_t>(m), 0.0);  // public: the n_k
  std::vector<double> losses(static_cast<size_t>(m), 0.0);   // non-secure rounds only
  std::map<uint32_t, privacy::SecAggDrop> drops;
  for (ClientTask& task : tasks) {
    const auto slot = static_cast<size_t>(
        std::lower_bound(sampled.begin(), sampled.end(), task.client) - sampled.begin());
    ClientUpdate update = std::move(*task.update);
    task.update.reset();
    if (!sendable(update, model_size)) {
      if (update.samples > 0) out.rejected.push_back(task.client);
      continue;
    }
    Rng noise = client_noise_rng(o.seed, round, task.client);
    inputs[slot] = secagg_input(update, c, m, mean_samples, noise);
    weights[slot] = client_weight(c, update.samples, mean_samples);
    losses[slot] = update.loss;
    const auto d = drop_points.find(task.client);
    if (d != drop_points.end()) drops[static_cast<uint32_t>(slot)] = d->second;
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].empty()) {
      inputs[i].assign(static_cast<size_t>(model_size), 0.0F);  // never sent
      drops[static_cast<uint32_t>(i)] = privacy::SecAggDrop::kBeforeAdvertise;
    }
  }
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

}  // namespace

SimulationResult run_simulation(const SimulationOptions& o) {
  check_options(o);
  const FlConfig& config = o.config;
  const int64_t per_round = config.clients_per_round();
  const LocalTraining training = local_training(o);

  std::vector<ClientTrainer> trainers;
  const int64_t threads = thread_count(config, per_round);
  trainers.reserve(static_cast<size_t>(threads));
  for (int64_t t = 0; t < threads; ++t) trainers.emplace_back(o.make_model, *o.train);
  const int64_t model_size = flat_size(trainers.front().model());
  const uint64_t model_bytes = static_cast<uint64_t>(model_size) * sizeof(float);
  std::optional<UploadCodec> codec;
  if (o.upload.method != compress::Method::kNone) {
    codec.emplace(o.upload, layouts_of(trainers.front().model()));
  }

  SimulationResult result;
  ServerState& state = result.state;
  ServerOptimizer server(config.server_optimizer, model_size);
  if (o.resume) {
    if (static_cast<int64_t>(o.resume->weights.size()) != model_size) {
      throw UsageError(fmt::format("run_simulation: the resume state has {} weights, the model {}",
                                   o.resume->weights.size(), model_size));
    }
    state.round = o.resume->round;
    state.weights = o.resume->weights;
    state.rejected_updates = o.resume->rejected_updates;
    state.accountant = o.resume->accountant;
    server.load_state_dict(o.resume->optimizer);
  } else {
    state.weights = flatten(trainers.front().model());
  }

  const bool private_rounds = config.secure_aggregation || config.dp();
  const double mean_samples =
      static_cast<double>(o.train->size()) / static_cast<double>(config.clients);
  RoundAccountant accountant(config, state.round, state.accountant, "run_simulation");
  const double dp_q = config.dp_sampling_rate();

  for (int64_t round = state.round + 1; round <= config.rounds; ++round) {
    if (std::optional<std::string> stop = accountant.budget_stop(round, dp_q)) {
      result.budget_exhausted = true;
      result.budget_stop = std::move(*stop);
      break;
    }
    const auto start = Clock::now();
    RoundReport report;
    report.round = round;
    report.sampled = sample_clients(config.clients, per_round, o.seed, round);

    // Fates: who trains, and for how long.
    std::vector<ClientTask> tasks;
    std::vector<int64_t> not_trained;
    std::map<int64_t, privacy::SecAggDrop> drop_points;  // secure rounds: drops mid-protocol
    for (int64_t k : report.sampled) {
      const ClientFate fate = client_fate(config, o.seed, round, k);
      if (fate == ClientFate::kDropped) {
        const privacy::SecAggDrop point = config.secure_aggregation
                                              ? secagg_drop_point(o.seed, round, k)
                                              : privacy::SecAggDrop::kBeforeAdvertise;
        if (point == privacy::SecAggDrop::kBeforeAdvertise) {
          not_trained.push_back(k);
          continue;
        }
        drop_points[k] = point;  // trains, then leaves the protocol at `point`
      }
      ClientTask task;
      task.client = k;
      if (fate == ClientFate::kStraggler) {
        if (!config.accepts_partial_work()) {  // late, and its work would be thrown away
          not_trained.push_back(k);
          continue;
        }
        const auto samples = static_cast<int64_t>(o.parts[static_cast<size_t>(k)].size());
        task.max_steps = straggler_steps(local_steps(samples, training), config.straggler_slowdown);
      }
      tasks.push_back(std::move(task));
    }

    {
      const SingleThreadedBlas single;
      train_clients(tasks, trainers, o, training, codec ? &*codec : nullptr, state.weights, round);
    }

    if (private_rounds) {
      int64_t eval_correct = 0;
      int64_t eval_samples = 0;
      std::map<int64_t, std::pair<int64_t, bool>> meta;  // client -> (correct, partial)
      for (const ClientTask& task : tasks) {
        if (task.update && task.update->samples == 0) not_trained.push_back(task.client);
        if (task.update) meta[task.client] = {task.correct, task.update->partial};
      }
      PrivateAggregate agg = aggregate_privately(tasks, drop_points, report.sampled, o, round,
                                                 model_size, mean_samples);
      report.secure = config.secure_aggregation;
      report.rejected = static_cast<int64_t>(agg.rejected.size());
      report.failure = agg.failure;
      report.failed = !agg.ok || static_cast<int64_t>(agg.included.size()) <
                                     std::max<int64_t>(1, config.min_fit_clients);
      if (agg.ok && report.failed) {
        report.failure = fmt::format("{} updates in the sum, fewer than fl.min_fit_clients = {}",
                                     agg.included.size(), config.min_fit_clients);
      }
      if (!report.failed) {
        server.apply(state.weights, agg.mean);
        accountant.step(dp_q);
        report.participated = agg.included;
      }
      for (const int64_t k : report.sampled) {
        if (!std::binary_search(report.participated.begin(), report.participated.end(), k) &&
            std::find(not_trained.begin(), not_trained.end(), k) == not_trained.end()) {
          not_trained.push_back(k);
        }
      }
      for (const int64_t k : report.participated) {
        const auto& [correct, partial] = meta[k];
        if (partial) report.partial.push_back(k);
        eval_correct += correct;
        eval_samples += static_cast<int64_t>(o.parts[static_cast<size_t>(k)].size());
      }
      std::sort(not_trained.begin(), not_trained.end());
      report.dropped = std::move(not_trained);
      report.train_loss = agg.train_loss;
      report.bytes_up = agg.bytes_up;
      accountant.record(report, state);
      state.rejected_updates += report.rejected;
      state.round = round;
      report.bytes_down = static_cast<uint64_t>(report.sampled.size()) * model_bytes;
      if (config.client_eval && eval_samples > 0) {
        report.client_accuracy =
            static_cast<double>(eval_correct) / static_cast<double>(eval_samples);
      }
    } else {
      // Aggregation in client-id order (tasks follow the ascending sample).
      RoundAggregator aggregator(round, config.clients, model_size, report.sampled);
      int64_t eval_correct = 0;
      int64_t eval_samples = 0;
      uint64_t bytes_up = 0;
      for (ClientTask& task : tasks) {
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
        bytes_up += codec ? task.upload_bytes : model_bytes;
        eval_correct += task.correct;
        eval_samples += samples;
      }
      std::sort(not_trained.begin(), not_trained.end());
      report.dropped = std::move(not_trained);
      report.participated = aggregator.accepted_clients();
      report.train_loss = aggregator.mean_loss();
      report.failed = aggregator.accepted() < std::max<int64_t>(1, config.min_fit_clients);
      if (!report.failed) server.apply(state.weights, aggregator.mean_delta());
      state.rejected_updates += report.rejected;
      state.round = round;
      report.bytes_down = static_cast<uint64_t>(report.sampled.size()) * model_bytes;
      report.bytes_up = bytes_up;
      if (config.client_eval && eval_samples > 0) {
        report.client_accuracy =
            static_cast<double>(eval_correct) / static_cast<double>(eval_samples);
      }
    }  // private_rounds
    if (o.evaluate && due(round, config.eval_every, config.rounds)) {
      report.test = o.evaluate(state.weights);
      result.last_test = report.test;
    }
    const bool stop = config.target_accuracy > 0.0 && report.test.has_value() &&
                      report.test->accuracy >= config.target_accuracy;
    report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (o.on_round) o.on_round(report);
    if (o.on_checkpoint && config.checkpoint_every > 0 &&
        (stop || due(round, config.checkpoint_every, config.rounds))) {
      state.optimizer = server.state_dict();
      o.on_checkpoint(state);
    }
    if (stop) {
      result.reached_target = true;
      break;
    }
  }
  state.optimizer = server.state_dict();
  return result;
}

}  // namespace dtrain::fl
