#include "cli/fl_deploy_command.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <chrono>
#include <iostream>

#include "cli/launcher.h"
#include "cli/process_log.h"
#include "cli/test_hooks.h"
#include "comm/rendezvous/job_secret.h"
#include "comm/rendezvous/launch_env.h"
#include "comm/wire/auth.h"
#include "core/error.h"
#include "core/log.h"
#include "io/output_lock.h"
#include "train/job_file.h"
#include "train/run_fl_deploy.h"

namespace dtrain::cli {

namespace {

train::JobConfig read_job(const FlDeployCommandOptions& options, Logger& logger) {
  std::vector<std::string> overrides = options.overrides;
  if (options.clients > 0) overrides.push_back(fmt::format("fl.clients={}", options.clients));
  train::JobFile file = train::read_job_file(options.job_file, overrides);
  for (const std::string& note : file.notes) logger.warn("{}", note);
  train::JobConfig job = std::move(file.job);
  if (options.output) {
    if (options.output->empty()) throw UsageError("--output must name a folder");
    job.output = *options.output;
  }
  return job;
}

std::string env_or(const std::map<std::string, std::string>& env, const std::string& name) {
  const auto it = env.find(name);
  return it == env.end() ? std::string() : it->second;
}

// The job's auth: DTRAIN_JOB_SECRET, or none on purpose (--insecure), and
// whether its links are encrypted.
comm::JobAuth job_auth(const FlDeployCommandOptions& options, const train::JobConfig& job,
                       Logger& logger) {
  comm::LaunchSettings settings = comm::resolve_launch_settings(options.environment);
  comm::resolve_job_secret(settings, job.security.key_file, job.source);
  const std::string& secret = settings.job_secret;
  const bool insecure = options.insecure || env_or(options.environment, "DTRAIN_INSECURE") == "1";
  if (secret.empty()) {
    if (!insecure) {
      throw UsageError(
          "DTRAIN_JOB_SECRET is not set: the federated server and its clients authenticate "
          "every frame with it (set the same secret for all of them, or name one key file: "
          "security.key_file or DTRAIN_KEY_FILE, made by `dtrain keygen FILE`; or pass "
          "--insecure to run without one on purpose)");
    }
    logger.warn(
        "federated job '{}': running without DTRAIN_JOB_SECRET (--insecure): frames "
        "are not authenticated",
        job.name);
  }
  // CURVE on the server's and clients' links (docs/security.md), from the
  // job file or DTRAIN_ENCRYPT=1 like the training jobs.
  const bool encrypt = job.security.encrypt || env_or(options.environment, "DTRAIN_ENCRYPT") == "1";
  return comm::JobAuth(job.name, secret, encrypt);
}

// DTRAIN_TEST_KILL_AT_ROUND=SLOT:ROUND[,SLOT:ROUND...]: the round at which
// the first process of `slot` kills itself.
std::optional<int64_t> kill_round(const std::map<std::string, std::string>& env, int64_t slot) {
  return test_slot_value(env, "DTRAIN_TEST_KILL_AT_ROUND", slot, "ROUND", 1);
}

void kill_self() { ::kill(getpid(), SIGKILL); }

int serve(const FlDeployCommandOptions& options, const train::JobConfig& job,
          const std::string& server, std::optional<int64_t> kill_at, std::ostream& out,
          Logger& logger) {
  train::FlServerRunOptions o;
  o.server = server;
  o.out = &out;
  o.logger = &logger;
  if (kill_at) {
    o.after_round = [round = *kill_at, &out](int64_t done) {
      if (done == round) {
        out.flush();
        kill_self();
      }
    };
  }
  return train::run_fl_server(job, job_auth(options, job, logger), o);
}

int client(const FlDeployCommandOptions& options, const train::JobConfig& job, int64_t id,
           const std::string& server, std::optional<int64_t> kill_at, Logger& logger) {
  train::FlClientRunOptions o;
  o.client = id;
  o.server = server;
  o.logger = &logger;
  o.server_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(options.server_timeout_s * 1000));
  if (kill_at) {
    o.on_task = [round = *kill_at](int64_t task) {
      if (task == round) kill_self();
    };
  }
  return train::run_fl_client(job, job_auth(options, job, logger), o);
}

std::string command_line(const std::vector<std::string>& argv) {
  std::string line;
  for (const std::string& arg : argv) line += (line.empty() ? "" : " ") + arg;
  return line;
}

}  // namespace

int run_fl_server_command(const FlDeployCommandOptions& options, std::ostream& out) {
  const auto started = std::chrono::system_clock::now();
  Logger& logger = Logger::stderr_logger();
  const train::JobConfig job = read_job(options, logger);
  const io::OutputLock lock = io::OutputLock::acquire(
      job.output, io::this_process_record(command_line(options.argv), started), logger);
  return serve(options, job, options.server, std::nullopt, out, logger);
}

int run_fl_client_command(const FlDeployCommandOptions& options, std::ostream&) {
  Logger& logger = Logger::stderr_logger();
  if (options.client_id < 0) throw UsageError("fl-client needs --client-id k (k >= 0)");
  const train::JobConfig job = read_job(options, logger);
  return client(options, job, options.client_id, options.server, std::nullopt, logger);
}

int run_fl_process(const FlDeployCommandOptions& options, std::ostream& out) {
  Logger& logger = Logger::stderr_logger();
  const std::string rank = env_or(options.environment, "DTRAIN_RANK");
  const std::string coordinator = env_or(options.environment, "DTRAIN_COORDINATOR");
  int64_t slot = -1;
  if (std::from_chars(rank.data(), rank.data() + rank.size(), slot).ptr !=
          rank.data() + rank.size() ||
      slot < 0 || coordinator.empty()) {
    throw UsageError(
        "fl-process runs only under `dtrain fl JOB --processes` (DTRAIN_RANK and "
        "DTRAIN_COORDINATOR not set)");
  }
  const train::JobConfig job = read_job(options, logger);
  const std::string server = "tcp://" + coordinator;
  const std::optional<int64_t> kill_at = kill_round(options.environment, slot);
  if (slot == 0) return serve(options, job, server, kill_at, out, logger);
  return client(options, job, slot - 1, server, kill_at, logger);
}

int run_fl_processes(const FlDeployCommandOptions& options, std::ostream& out) {
  const auto started = std::chrono::system_clock::now();
  Logger& logger = Logger::stderr_logger();
  const train::JobConfig job = read_job(options, logger);
  if (options.max_restarts < 0) throw UsageError("--max-restarts must not be negative");
  const io::OutputLock lock = io::OutputLock::acquire(
      job.output, io::this_process_record(command_line(options.argv), started), logger);
  LaunchOptions l;
  l.argv = {self_executable(), "fl-process", options.job_file, "--output", job.output};
  for (const std::string& o : options.overrides) {
    l.argv.push_back("--set");
    l.argv.push_back(o);
  }
  if (options.clients > 0) {
    l.argv.push_back("--set");
    l.argv.push_back(fmt::format("fl.clients={}", options.clients));
  }
  l.workers = static_cast<int>(job.fl.clients + 1);
  l.environment = options.environment;
  comm::LaunchSettings settings = comm::resolve_launch_settings(l.environment);
  comm::resolve_job_secret(settings, job.security.key_file, job.source);
  provide_job_secret(l.environment, settings.key_file);
  LaunchOptions::Elastic e;
  e.essential_slots = 1;
  e.first_worker_slot = 1;
  e.min_workers = 1;
  e.max_restarts = static_cast<int>(options.max_restarts);
  e.slot_name = [](int slot) {
    return slot == 0 ? std::string("fl server") : fmt::format("fl client {}", slot - 1);
  };
  l.elastic = std::move(e);
  ProcessLog processes(job.output + "/processes.jsonl", 1, logger);
  processes.attach(l);
  logger.info("fl job '{}': 1 server and {} client process(es), up to {} restart(s)", job.name,
              job.fl.clients, options.max_restarts);
  const int status =
      Launcher(std::move(l), out, std::cerr, logger).run(Deadline::never()).exit_code;
  processes.job_end(status);
  return status;
}

namespace {

void add_job_options(CLI::App& cmd, FlDeployCommandOptions& o) {
  cmd.add_option("job", o.job_file, "The TOML job file")->required()->check(CLI::ExistingFile);
  cmd.add_option("--set", o.overrides, "Override a job key, e.g. --set fl.rounds=5")
      ->type_name("KEY=VALUE");
}

void add_insecure(CLI::App& cmd, FlDeployCommandOptions& o) {
  cmd.add_flag("--insecure", o.insecure,
               "Run without DTRAIN_JOB_SECRET, on purpose: frames are not authenticated");
}

}  // namespace

FlDeployCommands add_fl_deploy_commands(CLI::App& app, FlDeployCommandOptions& o) {
  FlDeployCommands c;
  c.server = app.add_subcommand("fl-server", "Serve a federated job to its client processes");
  add_job_options(*c.server, o);
  c.server->add_option("--output", o.output, "Output folder (overrides job.output)");
  c.server->add_option("--server", o.server, "Bind address tcp://HOST:PORT (default fl.server)");
  add_insecure(*c.server, o);
  c.client = app.add_subcommand("fl-client", "Run one client of a federated job");
  add_job_options(*c.client, o);
  c.client->add_option("--client-id", o.client_id, "This client's id k in [0, fl.clients)")
      ->required()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  c.client->add_option("--server", o.server, "The server's tcp://HOST:PORT (default fl.server)");
  c.client
      ->add_option("--server-timeout", o.server_timeout_s,
                   "Seconds without a word from the server before the client gives up "
                   "(default 60)")
      ->check(CLI::Range(0.1, 86400.0));
  add_insecure(*c.client, o);
  c.process = app.add_subcommand("fl-process", "");  // hidden: started by `fl --processes`
  add_job_options(*c.process, o);
  c.process->add_option("--output", o.output, "Output folder");
  c.process->group("");
  try {
    c.fl = app.get_subcommand("fl");
  } catch (const CLI::OptionNotFound&) {
    c.fl = app.add_subcommand("fl", "Run a federated job (--processes: as real processes here)");
    c.fl_is_ours = true;
    add_job_options(*c.fl, o);
    c.fl->add_option("--clients", o.clients, "Number of clients K (overrides fl.clients)");
    c.fl->add_option("--output", o.output, "Output folder (overrides job.output)");
  }
  c.fl->add_flag("--processes", o.processes,
                 "Start one server and K client processes on this machine instead of a "
                 "simulation");
  c.fl->add_option("--max-restarts", o.max_restarts,
                   "--processes: times a failed server (or client) process is started again "
                   "(default 1)")
      ->check(CLI::Range(int64_t{0}, int64_t{1000}));
  return c;
}

std::optional<int> run_fl_deploy_commands(const FlDeployCommands& c, FlDeployCommandOptions& o,
                                          std::map<std::string, std::string> environment,
                                          std::vector<std::string> argv, std::ostream& out) {
  o.environment = std::move(environment);
  o.argv = std::move(argv);
  if (c.server->parsed()) return run_fl_server_command(o, out);
  if (c.client->parsed()) return run_fl_client_command(o, out);
  if (c.process->parsed()) return run_fl_process(o, out);
  if (!c.fl->parsed()) return std::nullopt;
  if (!o.processes) {
    if (c.fl_is_ours) {
      throw UsageError("this build runs `dtrain fl` only with --processes (no simulation)");
    }
    return std::nullopt;
  }
  if (!c.fl_is_ours) {
    // The simulation's subcommand holds the job's options.
    o.job_file = c.fl->get_option("job")->as<std::string>();
    if (const CLI::Option* set = c.fl->get_option_no_throw("--set"); set && set->count() > 0) {
      o.overrides = set->as<std::vector<std::string>>();
    }
    for (const auto& [flag, key] :
         {std::pair{"--clients", "fl.clients"}, std::pair{"--fraction", "fl.fraction"},
          std::pair{"--rounds", "fl.rounds"}}) {
      if (const CLI::Option* opt = c.fl->get_option_no_throw(flag); opt && opt->count() > 0) {
        o.overrides.push_back(fmt::format("{}={}", key, opt->as<std::string>()));
      }
    }
    if (const CLI::Option* d = c.fl->get_option_no_throw("--output"); d && d->count() > 0) {
      o.output = d->as<std::string>();
    }
  }
  return run_fl_processes(o, out);
}

}  // namespace dtrain::cli
