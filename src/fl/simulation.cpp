#include "fl/simulation.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "core/error.h"
#include "fl/flat_model.h"
#include "fl/sampling.h"
#include "fl/server_optimizer.h"
#include "fl/update.h"

namespace dtrain::fl {

namespace {

using Clock = std::chrono::steady_clock;

// One client's work in a round: train `client` for at most `max_steps` steps.
struct ClientTask {
  int64_t client = 0;
  int64_t max_steps = std::numeric_limits<int64_t>::max();
  std::optional<ClientUpdate> update;
  int64_t correct = 0;  // client_eval: the global model's hits on the client's data
};

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
}

bool due(int64_t round, int64_t every, int64_t last) {
  return round == last || (every > 0 && round % every == 0);
}

// Trains every task on `trainers.size()` threads, each pulling the next task
// from a shared index. The first exception stops the others from taking new
// tasks and is rethrown once all have joined.
void train_clients(std::vector<ClientTask>& tasks, std::vector<ClientTrainer>& trainers,
                   const SimulationOptions& o, const LocalTraining& training,
                   std::span<const float> global, int64_t round) {
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
    server.load_state_dict(o.resume->optimizer);
  } else {
    state.weights = flatten(trainers.front().model());
  }

  for (int64_t round = state.round + 1; round <= config.rounds; ++round) {
    const auto start = Clock::now();
    RoundReport report;
    report.round = round;
    report.sampled = sample_clients(config.clients, per_round, o.seed, round);

    // Fates: who trains, and for how long.
    std::vector<ClientTask> tasks;
    std::vector<int64_t> not_trained;
    for (int64_t k : report.sampled) {
      const ClientFate fate = client_fate(config, o.seed, round, k);
      if (fate == ClientFate::kDropped) {
        not_trained.push_back(k);
        continue;
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
      train_clients(tasks, trainers, o, training, state.weights, round);
    }

    // Aggregation in client-id order (tasks follow the ascending sample).
    RoundAggregator aggregator(round, config.clients, model_size, report.sampled);
    int64_t eval_correct = 0;
    int64_t eval_samples = 0;
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
    report.bytes_up = static_cast<uint64_t>(aggregator.accepted()) * model_bytes;
    if (config.client_eval && eval_samples > 0) {
      report.client_accuracy =
          static_cast<double>(eval_correct) / static_cast<double>(eval_samples);
    }
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
