// The deployed federated commands (docs/federated.md, "Real processes"):
//
//   dtrain fl-server JOB [--output DIR] [--server tcp://HOST:PORT]
//   dtrain fl-client JOB --client-id k [--server tcp://HOST:PORT]
//   dtrain fl JOB --clients N --processes [--max-restarts R]
//
// fl-server and fl-client authenticate every frame with DTRAIN_JOB_SECRET
// (the environment; --insecure or DTRAIN_INSECURE=1 runs without one, on
// purpose, with a warning). `--processes` starts one server and N clients
// on this machine with the Launcher (cli/launcher.h): a fresh job secret, a
// free loopback port for the server given to every process, slot 0 the
// server and slot k + 1 client k (each runs the hidden `dtrain fl-process`).
// The server slot is essential: when it fails it is started again while
// restarts remain (it resumes from its last checkpoint), else the job stops;
// a client may die without stopping the job. The job ends when the server
// exits 0.
//
// Test hook: DTRAIN_TEST_KILL_AT_ROUND=SLOT:ROUND[,SLOT:ROUND...]: the
// first process of SLOT SIGKILLs itself: the server after round ROUND was
// checkpointed, a client on receiving the task of round ROUND (mid-round).
//
// Errors: UsageError for bad flags or a missing secret; what the job
// throws. Blocking: the whole job.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace dtrain::cli {

struct FlDeployCommandOptions {
  std::string job_file;
  std::vector<std::string> overrides;
  std::optional<std::string> output;
  std::string server;  // empty: fl.server of the job (fl-process: from DTRAIN_COORDINATOR)
  int64_t client_id = -1;
  int64_t clients = 0;  // --processes: N (0: fl.clients)
  int64_t max_restarts = 1;
  double server_timeout_s = 60.0;  // fl-client: silence from the server before it gives up
  bool insecure = false;
  bool processes = false;  // `dtrain fl --processes`
  std::map<std::string, std::string> environment;
  std::vector<std::string> argv;  // the command line (argv[0]: self_executable())
};

int run_fl_server_command(const FlDeployCommandOptions& options, std::ostream& out);
int run_fl_client_command(const FlDeployCommandOptions& options, std::ostream& out);
// `dtrain fl JOB --processes`.
int run_fl_processes(const FlDeployCommandOptions& options, std::ostream& out);
// One process `dtrain fl JOB --processes` started (slot from DTRAIN_RANK).
int run_fl_process(const FlDeployCommandOptions& options, std::ostream& out);

// The subcommands fl-server, fl-client and (hidden) fl-process, and the
// flags --processes and --max-restarts of `dtrain fl` (added to the
// simulation's `fl` subcommand when one exists, which must then have the
// positional "job" and the options --clients, --set and --output; else a
// `fl` subcommand of its own that needs --processes).
struct FlDeployCommands {
  CLI::App* server = nullptr;
  CLI::App* client = nullptr;
  CLI::App* process = nullptr;
  CLI::App* fl = nullptr;
  bool fl_is_ours = false;
};
FlDeployCommands add_fl_deploy_commands(CLI::App& app, FlDeployCommandOptions& options);

// After parsing: runs the deployed command that was given and returns its
// status, or nullopt when none was (`dtrain fl` without --processes is the
// simulation's). `environment` and `argv` are the process's.
std::optional<int> run_fl_deploy_commands(const FlDeployCommands& commands,
                                          FlDeployCommandOptions& options,
                                          std::map<std::string, std::string> environment,
                                          std::vector<std::string> argv, std::ostream& out);

}  // namespace dtrain::cli
