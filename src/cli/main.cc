// The dtrain executable: `dtrain train JOB.toml`, `dtrain eval JOB.toml
// --weights FILE`. The only place that reads the process environment,
// decides where output goes and turns dtrain::Error kinds into exit codes.
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cli/commands.h"
#include "cli/dashboard_command.h"
#include "cli/fl_command.h"
#include "cli/fl_deploy_command.h"
#include "cli/keygen_command.h"
#include "cli/launcher.h"
#include "cli/trace_command.h"
#include "core/error.h"
#include "train/run_job.h"

// LeakSanitizer's built-in suppressions for this program (read only in
// sanitizer builds; tests/lsan.supp holds the same for the test binaries):
// libzmq 4.3.4 now and then leaks one 76-byte block on an I/O thread when a
// socket's ipc peer (a ps server that finished) goes away while the socket
// closes: an allocation inside libzmq reached through no dtrain frame.
// fontconfig keeps the patterns of the fonts that cairo's text used (`dtrain
// plot`) in caches that live until exit.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:libzmq.so\nleak:libfontconfig.so\n";
}

namespace {

// glibc serves an allocation above its mmap threshold (128 KiB, raised as
// freed chunks come back) with a fresh mmap, and gives a freed heap top back
// to the kernel past its trim threshold. A ps server or worker that
// allocates and frees frames of hundreds of KiB every step then pays, now
// and then for a whole run, a page fault and a zeroed page per 4 KiB of
// every frame (measured on a ps server: a third of its CPU time,
// docs/parameter-server.md "Where the time goes"). Fixed thresholds keep
// buffers up to 32 MiB (glibc's largest mmap threshold) in the heap for
// reuse and at most 256 MiB of free heap top per process.
void keep_frame_buffers_in_the_heap() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

// One exit code per error kind, documented in --help.
int exit_code_for(const std::exception& e) {
  using namespace dtrain;
  if (dynamic_cast<const ConfigError*>(&e) || dynamic_cast<const UsageError*>(&e)) return 2;
  if (dynamic_cast<const DataError*>(&e)) return 3;
  if (dynamic_cast<const CommError*>(&e)) return 4;
  if (dynamic_cast<const CheckpointError*>(&e)) return 5;
  if (dynamic_cast<const NumericError*>(&e)) return 6;
  if (dynamic_cast<const InternalError*>(&e)) return 70;
  return 1;
}

// A worker the launcher started (DTRAIN_RUN_DIR names its run folder) that
// still runs after the job finished training without it gets
// cli::kJobFinishedSignal: it says so in one line and exits 0.
void on_job_finished(int) {
  static constexpr char kLine[] =
      "dtrain: the job finished training without this process (it was dropped, or silent past "
      "the heartbeat timeout): exiting\n";
  [[maybe_unused]] const ssize_t n = write(STDERR_FILENO, kLine, sizeof kLine - 1);
  _exit(0);
}

// A launched worker that fails because a peer failed or went silent tells
// the launcher which (cli::write_failure_report), so that it blames that
// peer rather than this worker.
void report_failure(const std::exception& e) {
  const auto* comm_error = dynamic_cast<const dtrain::CommError*>(&e);
  const char* run_dir = std::getenv("DTRAIN_RUN_DIR");
  const char* rank = std::getenv("DTRAIN_RANK");
  if (comm_error == nullptr || comm_error->peer() < 0 || run_dir == nullptr || rank == nullptr)
    return;
  char* end = nullptr;
  const long slot = std::strtol(rank, &end, 10);
  if (end == rank || *end != '\0' || slot < 0 || slot > INT_MAX) return;
  dtrain::cli::write_failure_report(run_dir, static_cast<int>(slot),
                                    {comm_error->peer(), e.what()});
}

// The flags of `dtrain train` that are applied after parsing.
struct TrainFlags {
  bool resume = false;
  bool no_resume = false;
  bool elastic = false;
  bool no_elastic = false;
  bool insecure = false;
};

// `dtrain train`: the job file, its overrides and the processes it runs.
void add_job_options(CLI::App* train_cmd, dtrain::cli::TrainOptions& train) {
  train_cmd->add_option("job", train.job_file, "The TOML job file")
      ->required()
      ->check(CLI::ExistingFile);
  train_cmd->add_option("--set", train.overrides, "Override a job key, e.g. --set train.epochs=3")
      ->type_name("KEY=VALUE");
  train_cmd->add_option("--workers", train.workers,
                        "Number of workers: processes started here (allreduce, ps) or replicas "
                        "(mirrored)");
  train_cmd
      ->add_option("--max-local-workers", train.max_local_workers,
                   "The most processes --workers N may start on this machine (default: 8 per "
                   "CPU core, at least 64, within the open-file limit)")
      ->check(CLI::Range(int64_t{1}, int64_t{INT_MAX}));
  train_cmd->add_option("--strategy", train.strategy,
                        "the distribution strategy (default: allreduce with --workers N > 1, "
                        "else local). " +
                            dtrain::train::strategy_help());
  train_cmd->add_option("--servers", train.servers,
                        "ps: parameter-server processes (distributed.ps.servers, default 1); "
                        "with --workers N, S + N processes start here");
  train_cmd->add_option("--replicas", train.replicas,
                        "ps, sync: each server's key range is also held by the next R servers, "
                        "which keep its optimizer state and rows bit-identical "
                        "(distributed.ps.replicas, default 0; R < S)");
  train_cmd->add_flag("--colocate", train.colocate,
                      "ps: server i runs as a thread of worker i's process instead of a process "
                      "of its own (distributed.ps.colocate; S <= N): N processes start here");
}

// `dtrain train`: a worker started by another launcher (rank, world, coordinator), the output
// folder and BLAS threads.
void add_rank_options(CLI::App* train_cmd, dtrain::cli::TrainOptions& train) {
  train_cmd->add_option("--rank", train.rank,
                        "This worker's rank (default: DTRAIN_RANK, mpirun's or Slurm's)");
  train_cmd->add_option("--world-size", train.world_size,
                        "Workers in the job (default: DTRAIN_WORLD_SIZE, mpirun's or Slurm's)");
  train_cmd->add_option(
      "--coordinator", train.coordinator,
      "host:port where rank 0 hosts the rendezvous (default: DTRAIN_COORDINATOR)");
  train_cmd->add_option("--output", train.output, "Output folder (overrides job.output)");
  train_cmd->add_option("--threads", train.threads,
                        "Compute threads per worker: the intra-op team splits convolutions, "
                        "pooling, dense layers and SGD; OpenBLAS stays at one thread (default 1)");
}

// `dtrain train`: resuming from checkpoints and restarting failed processes.
void add_restart_options(CLI::App* train_cmd, dtrain::cli::TrainOptions& train, TrainFlags& flags) {
  train_cmd->add_flag("--resume", flags.resume,
                      "Resume from the newest valid checkpoint in the output folder (the default)");
  train_cmd
      ->add_flag("--no-resume", flags.no_resume,
                 "Start afresh even if the output folder has checkpoints")
      ->excludes("--resume");
  train_cmd
      ->add_flag("--force-resume", train.force_resume,
                 "Resume even from a checkpoint written by another job (another job.name, "
                 "seed or model shapes); refused otherwise")
      ->excludes("--no-resume");
  train_cmd
      ->add_option("--max-restarts", train.max_restarts,
                   "With --workers N: start the job again from its last checkpoint after a "
                   "worker failed, at most this often; with --elastic or --strategy ps: start "
                   "failed processes again in place, at most this often over the job "
                   "(default: train.max_restarts, 0)")
      ->check(CLI::Range(int64_t{0}, int64_t{INT_MAX}));
}

// `dtrain train`: emulated slow workers and links (tests and benchmarks).
void add_emulation_options(CLI::App* train_cmd, dtrain::cli::TrainOptions& train) {
  train_cmd
      ->add_option("--slowdown", train.slowdown,
                   "Make the worker of RANK (or every worker: all=FACTOR) compute FACTOR "
                   "times slower; a RANK entry beats the all one (repeatable; for tests and "
                   "benchmarks of dynamic batch sizing)")
      ->type_name("RANK=FACTOR");
  train_cmd
      ->add_option("--slow-link", train.slow_link,
                   "Make the emulated link of the worker of RANK FACTOR times slower "
                   "(distributed.link_mbps / FACTOR, link_latency_ms x FACTOR; needs "
                   "distributed.link_mbps; repeatable; for benchmarks)")
      ->type_name("RANK=FACTOR");
}

// `dtrain train`: elastic training and the etcd rendezvous (--rdzv).
void add_elastic_options(CLI::App* train_cmd, dtrain::cli::TrainOptions& train, TrainFlags& flags) {
  train_cmd->add_flag("--elastic", flags.elastic,
                      "With --workers N: when a worker fails the others continue without a "
                      "restart, and a new worker (--max-restarts) joins at a step boundary");
  train_cmd
      ->add_flag("--no-elastic", flags.no_elastic,
                 "Restart mode even if the job says train.elastic; with --rdzv (elastic by "
                 "default): every failure stops the whole group, which restarts from the newest "
                 "checkpoint in the shared output folder (--max-restarts times)")
      ->excludes("--elastic");
  train_cmd
      ->add_option("--min-workers", train.min_workers,
                   "With --elastic or --strategy ps: stop the job once fewer workers run "
                   "(default: train.min_workers, else N; ps: 1)")
      ->check(CLI::Range(int64_t{1}, int64_t{INT_MAX}));
  train_cmd->add_option("--rdzv", train.rdzv,
                        "Run this host's agent of a job whose elastic group forms in etcd: "
                        "etcd://HOST:PORT/JOB_ID (same on every host; needs the same job secret "
                        "on every host: a key file (security.key_file, DTRAIN_KEY_FILE) or "
                        "DTRAIN_JOB_SECRET)");
  train_cmd->add_option("--nnodes", train.nnodes, "With --rdzv: MIN:MAX hosts (or N)");
  train_cmd
      ->add_option("--nproc-per-node", train.nproc_per_node,
                   "With --rdzv: workers this agent starts (the same on every host)")
      ->check(CLI::Range(1, 4096));
  train_cmd->add_option("--host-address", train.host_address,
                        "With --rdzv: this host's address, which its workers bind and the other "
                        "hosts reach (default DTRAIN_HOST_ADDRESS, else 127.0.0.1)");
  train_cmd
      ->add_option("--rdzv-ttl", train.rdzv_ttl_s,
                   "With --rdzv: the lease TTL in seconds; a host silent this long is dropped "
                   "from the group (default 10)")
      ->check(CLI::Range(1, 3600));
}

// `dtrain train`: authentication, progress display and the dashboard.
void add_session_options(CLI::App* train_cmd, dtrain::cli::TrainOptions& train, TrainFlags& flags) {
  train_cmd->add_flag("--insecure", flags.insecure,
                      "Run a job started by another launcher (mpirun, srun, by hand) without "
                      "DTRAIN_JOB_SECRET, on purpose: frames are not authenticated (same as "
                      "DTRAIN_INSECURE=1; every rank warns)");
  train_cmd->add_option("--progress", train.progress, "auto | bar | plain | none")
      ->check(CLI::IsMember({"auto", "bar", "plain", "none"}));
  train_cmd
      ->add_option("--dashboard", train.dashboard_port,
                   "Serve the live dashboard on this port while the job runs (0: a free one); "
                   "the URL with its access token is printed at the start")
      ->check(CLI::Range(0, 65535));
  train_cmd->add_option("--dashboard-host", train.dashboard_host,
                        "The address the dashboard listens on (default 127.0.0.1: this machine "
                        "only)");
}

CLI::App* add_train_command(CLI::App& app, dtrain::cli::TrainOptions& train, TrainFlags& flags) {
  CLI::App* train_cmd = app.add_subcommand("train", "Train the model a job file describes");
  add_job_options(train_cmd, train);
  add_rank_options(train_cmd, train);
  add_restart_options(train_cmd, train, flags);
  add_emulation_options(train_cmd, train);
  add_elastic_options(train_cmd, train, flags);
  add_session_options(train_cmd, train, flags);

  return train_cmd;
}

CLI::App* add_eval_command(CLI::App& app, dtrain::cli::EvalOptions& eval) {
  CLI::App* eval_cmd = app.add_subcommand("eval", "Evaluate saved weights on the job's test set");
  eval_cmd->add_option("job", eval.job_file, "The TOML job file")
      ->required()
      ->check(CLI::ExistingFile);
  eval_cmd->add_option("--weights", eval.weights, "A .safetensors file written by dtrain train")
      ->required()
      ->check(CLI::ExistingFile);
  eval_cmd->add_option("--set", eval.overrides, "Override a job key")->type_name("KEY=VALUE");

  return eval_cmd;
}

CLI::App* add_partition_command(CLI::App& app, dtrain::cli::PartitionCommandOptions& part) {
  CLI::App* part_cmd = app.add_subcommand(
      "partition", "Show how a partitioner splits the job's training set (labels per worker)");
  part_cmd->add_option("job", part.job_file, "The TOML job file")
      ->required()
      ->check(CLI::ExistingFile);
  part_cmd->add_option("--kind", part.kind, "iid | label | dirichlet | quantity | shards")
      ->check(CLI::IsMember({"iid", "label", "dirichlet", "quantity", "shards"}));
  part_cmd->add_option("--workers", part.workers, "Number of parts");
  part_cmd->add_option("--seed", part.seed, "Seed of the partition");
  part_cmd->add_option("--classes-per-worker", part.classes_per_worker,
                       "label: classes each worker gets");
  part_cmd->add_option("--alpha", part.alpha, "dirichlet: concentration (small: skewed)");
  part_cmd->add_option("--sigma", part.quantity_sigma, "quantity: spread of the log sizes");
  part_cmd->add_option("--shards-per-worker", part.shards_per_worker,
                       "shards: label-sorted shards each worker gets (FedAvg paper: 2)");
  part_cmd->add_option("--set", part.overrides, "Override a job key")->type_name("KEY=VALUE");
  part_cmd->add_option("--image", part.image,
                       "Also draw the table as a heat map, workers x classes (.svg or .png)");

  return part_cmd;
}

CLI::App* add_plot_command(CLI::App& app, dtrain::cli::PlotCommandOptions& plot) {
  CLI::App* plot_cmd = app.add_subcommand(
      "plot", "Draw training curves of runs (loss and test accuracy by step and wall time)");
  plot_cmd->add_option("runs", plot.runs, "Run folders (holding metrics.jsonl), or NAME=DIR")
      ->required()
      ->type_name("RUN_DIR");
  plot_cmd->add_option("-o,--output", plot.output, "The picture: FILE.svg or FILE.png")->required();
  plot_cmd->add_option("--title", plot.title, "A title above the panels");
  plot_cmd->add_option("--width", plot.width, "Width in pixels (PNG) or points (SVG)")
      ->check(CLI::Range(400, 10000));
  plot_cmd->add_option("--height", plot.height, "Height in pixels (PNG) or points (SVG)")
      ->check(CLI::Range(300, 10000));

  return plot_cmd;
}

// `dtrain fl`: a federated job simulated in this process.
struct FlFlags {
  bool resume = false;
  bool no_resume = false;
};

CLI::App* add_fl_command(CLI::App& app, dtrain::cli::FlCommandOptions& fl, FlFlags& flags) {
  CLI::App* fl_cmd = app.add_subcommand(
      "fl",
      "Federated learning: simulate the job's clients in this process (FedAvg, FedProx, "
      "FedOpt; the job's [fl] table)");
  fl_cmd->add_option("job", fl.job_file, "The TOML job file")->required()->check(CLI::ExistingFile);
  fl_cmd->add_option("--clients", fl.clients, "K, the number of clients (fl.clients)");
  fl_cmd->add_option("--fraction", fl.fraction,
                     "C, the fraction of clients sampled per round (fl.fraction)");
  fl_cmd->add_option("--rounds", fl.rounds, "Rounds to run (fl.rounds)");
  fl_cmd->add_option("--threads", fl.threads,
                     "Simulation threads (fl.threads; 0: one per core); the result does not "
                     "depend on it");
  fl_cmd->add_option("--output", fl.output, "Output folder (overrides job.output)");
  fl_cmd->add_option("--set", fl.overrides, "Override a job key, e.g. --set fl.local_epochs=5")
      ->type_name("KEY=VALUE");
  fl_cmd->add_flag("--resume", flags.resume,
                   "Resume from the newest valid checkpoint in OUTPUT/checkpoints (the default)");
  fl_cmd
      ->add_flag("--no-resume", flags.no_resume,
                 "Start afresh even if the output folder has checkpoints")
      ->excludes("--resume");
  fl_cmd->add_option("--progress", fl.progress, "plain (a line per round) | none")
      ->check(CLI::IsMember({"plain", "none"}));
  return fl_cmd;
}

// `dtrain train` with what parsing left to do: the environment, the command
// line, the progress mode.
int train(dtrain::cli::TrainOptions& train, const TrainFlags& flags, int argc, char** argv) {
  keep_frame_buffers_in_the_heap();  // every process of a job runs `dtrain train`
  if (flags.resume || flags.no_resume) train.resume = flags.resume;
  if (flags.elastic) train.elastic = true;
  if (flags.no_elastic) train.elastic = false;
  train.environment = dtrain::cli::current_environment();
  if (flags.insecure) train.environment["DTRAIN_INSECURE"] = "1";
  train.argv.assign(argv, argv + argc);
  train.argv[0] = dtrain::cli::self_executable();
  if (train.progress == "auto") train.progress = isatty(STDOUT_FILENO) ? "bar" : "plain";
  return dtrain::cli::run_train(train, std::cout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dtrain: data-parallel training of neural networks"};
  app.footer(
      "Exit codes: 0 success, 1 other error, 2 bad job file or usage, 3 bad data, "
      "4 communication failure, 5 checkpoint error, 6 non-finite values in training, 70 internal "
      "error.");
  app.require_subcommand(1);
  app.set_version_flag("--version", "dtrain 0.1.0");
  dtrain::cli::TrainOptions train_options;
  TrainFlags flags;
  const CLI::App* train_cmd = add_train_command(app, train_options, flags);
  dtrain::cli::EvalOptions eval;
  add_eval_command(app, eval);
  dtrain::cli::PartitionCommandOptions part;
  const CLI::App* part_cmd = add_partition_command(app, part);
  dtrain::cli::PlotCommandOptions plot;
  const CLI::App* plot_cmd = add_plot_command(app, plot);
  dtrain::cli::FlCommandOptions fl_options;
  FlFlags fl_flags;
  const CLI::App* fl_cmd = add_fl_command(app, fl_options, fl_flags);
  dtrain::cli::ServeOptions serve;
  CLI::App* serve_cmd = app.add_subcommand(
      "serve", "Serve the live dashboard of a run folder (finished or running) until Ctrl-C");
  serve_cmd->add_option("run_dir", serve.run_dir, "The run's output folder")->required();
  serve_cmd->add_option("--port", serve.port, "Port (default 0: a free one)")
      ->check(CLI::Range(0, 65535));
  serve_cmd->add_option("--host", serve.host, "Address to listen on (default 127.0.0.1)");
  serve_cmd->add_option("--job", serve.job_file,
                        "The job file to show (default: RUN_DIR/job.toml)");
  dtrain::cli::KeygenOptions keygen;
  const CLI::App* keygen_cmd = dtrain::cli::add_keygen_command(app, keygen);
  dtrain::cli::TraceFlags trace_flags;
  add_trace_flags(*app.get_subcommand("train"), trace_flags);
  dtrain::cli::TraceCommandOptions trace_options;
  const dtrain::cli::TraceCommands trace_cmds = add_trace_command(app, trace_options);
  // Federated deployment: fl-server, fl-client, `fl --processes` (after any `fl` subcommand).
  dtrain::cli::FlDeployCommandOptions fl_deploy;
  const dtrain::cli::FlDeployCommands fl_deploy_cmds =
      dtrain::cli::add_fl_deploy_commands(app, fl_deploy);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help and version exit 0; every usage error exits 2, as --help documents.
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (std::getenv("DTRAIN_RUN_DIR") != nullptr)
    signal(dtrain::cli::kJobFinishedSignal, on_job_finished);

  try {
    if (const std::optional<int> status = dtrain::cli::run_fl_deploy_commands(
            fl_deploy_cmds, fl_deploy, dtrain::cli::current_environment(), {argv, argv + argc},
            std::cout)) {
      return *status;
    }
    if (train_cmd->parsed()) apply_trace_flags(trace_flags, train_options);
    if (trace_cmds.merge->parsed()) {
      return dtrain::cli::run_trace_merge(trace_options, std::cout, std::cerr);
    }
    if (trace_cmds.stats->parsed()) {
      return dtrain::cli::run_trace_stats(trace_options, std::cout, std::cerr);
    }
    if (train_cmd->parsed()) return train(train_options, flags, argc, argv);
    if (part_cmd->parsed()) return dtrain::cli::run_partition(part, std::cout);
    if (fl_cmd->parsed()) {
      if (fl_flags.resume || fl_flags.no_resume) fl_options.resume = fl_flags.resume;
      fl_options.argv.assign(argv, argv + argc);
      return dtrain::cli::run_fl_command(fl_options, std::cout);
    }
    if (plot_cmd->parsed()) return dtrain::cli::run_plot(plot, std::cout);
    if (keygen_cmd->parsed()) return dtrain::cli::run_keygen(keygen, std::cout);
    if (serve_cmd->parsed()) return dtrain::cli::run_serve(serve, std::cout);
    return dtrain::cli::run_eval(eval, std::cout);
  } catch (const std::exception& e) {
    std::cout.flush();
    std::fprintf(stderr, "dtrain: error: %s\n", e.what());
    report_failure(e);
    return exit_code_for(e);
  }
}
