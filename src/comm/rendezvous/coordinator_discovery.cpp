#include "comm/rendezvous/coordinator_discovery.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "comm/rendezvous/host_address.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

constexpr const char* kFileHeader = "dtrain coordinator 1\n";

// An address a socket can bind (a name cannot: ZeroMQ binds interfaces).
bool is_address(const std::string& host) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, host.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

std::string with_port(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                             : fmt::format("{}:{}", host, port);
}

std::string sanitized(const std::string& text) {
  std::string out = text;
  for (char& c : out) {
    const bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '_' || c == '-';
    if (!keep) c = '_';
  }
  return out;
}

}  // namespace

std::string mpirun_launch_id(const std::map<std::string, std::string>& env) {
  std::string id;
  for (const char* name :
       {"PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid"}) {
    if (const auto it = env.find(name); it != env.end() && !it->second.empty()) {
      id = it->second;
      break;
    }
  }
  if (id.empty()) return "";
  if (const auto it = env.find("OMPI_MCA_orte_precondition_transports"); it != env.end()) {
    id += "-" + it->second;
  }
  return sanitized(id);
}

std::string coordinator_file_path(const std::string& folder, const std::string& launch_id) {
  return fmt::format("{}/.dtrain-coordinator-{}", folder.empty() ? "." : folder, launch_id);
}

std::string encode_coordinator_file(const std::string& launch_id, const std::string& address) {
  return fmt::format("{}launch {}\naddress {}\n", kFileHeader, launch_id, address);
}

std::optional<std::string> decode_coordinator_file(const std::string& content,
                                                   const std::string& launch_id) {
  const std::string launch_line = "launch " + launch_id + "\n";
  const std::string prefix = kFileHeader + launch_line + "address ";
  if (content.size() <= prefix.size() + 1 || content.compare(0, prefix.size(), prefix) != 0 ||
      content.back() != '\n') {
    return std::nullopt;
  }
  std::string address = content.substr(prefix.size(), content.size() - prefix.size() - 1);
  try {
    parse_host_port(address, "coordinator file");
  } catch (const ConfigError&) {
    return std::nullopt;
  }
  return address;
}

CoordinatorMeeting::CoordinatorMeeting(const LaunchInfo& launch, const JobAuth& auth,
                                       Deadline deadline, Logger& logger)
    : logger_(&logger) {
  const bool by_file = launch.coordinator.empty() && !launch.discovery.launch_id.empty();
  if (launch.coordinator.empty() && !by_file) {
    throw ConfigError(fmt::format(
        "rank {} of {} ({}) has no coordinator address: set DTRAIN_COORDINATOR=host:port",
        launch.rank, launch.world_size, launch.source));
  }
  if (by_file && launch.discovery.files == nullptr) {
    throw ConfigError(fmt::format(
        "rank {} of {} (mpirun launch {}) has no coordinator address and no folder to find it "
        "in: set DTRAIN_COORDINATOR=host:port",
        launch.rank, launch.world_size, launch.discovery.launch_id));
  }
  if (launch.rank == 0) {
    host(launch, auth, logger);
  } else if (by_file) {
    await_file(launch, deadline, logger);
  } else {
    address_ = launch.coordinator;
  }
}

CoordinatorMeeting::~CoordinatorMeeting() {
  if (published_path_.empty()) return;
  try {
    files_->remove(published_path_);
  } catch (const std::exception& e) {
    logger_->warn("could not remove the coordinator file {}: {}", published_path_, e.what());
  }
}

void CoordinatorMeeting::host(const LaunchInfo& launch, const JobAuth& auth, Logger& logger) {
  const std::string& listen = launch.settings.listen_host;
  if (!launch.coordinator.empty()) {
    const HostPort hp = parse_host_port(launch.coordinator, "coordinator");
    const std::string host = hp.host == "localhost" ? "127.0.0.1" : hp.host;
    const std::string bind = is_wildcard_host(listen) || !is_address(host) ? "0.0.0.0" : host;
    try {
      server_ = std::make_unique<RendezvousServer>(bind, hp.port, launch.world_size, auth, logger);
    } catch (const CommError& e) {
      throw CommError(0, "hosting the rendezvous",
                      fmt::format("{} (coordinator {} from {}; DTRAIN_COORDINATOR=host:port "
                                  "picks another)",
                                  e.what(), launch.coordinator, launch.coordinator_source));
    }
    address_ = launch.coordinator;
    return;
  }
  const std::string bind = is_wildcard_host(listen) ? "0.0.0.0" : listen;
  server_ = std::make_unique<RendezvousServer>(bind, 0, launch.world_size, auth, logger);
  std::string advertise = launch.settings.advertise_host;
  if (advertise.empty()) advertise = is_wildcard_host(listen) ? this_host_name() : listen;
  address_ = with_port(advertise, server_->port());
  files_ = launch.discovery.files;
  const std::string path =
      coordinator_file_path(launch.discovery.folder, launch.discovery.launch_id);
  files_->write_atomic(path, encode_coordinator_file(launch.discovery.launch_id, address_));
  published_path_ = path;
  logger.info("rank 0: rendezvous at {}, published in {} (mpirun launch {})", address_, path,
              launch.discovery.launch_id);
}

void CoordinatorMeeting::await_file(const LaunchInfo& launch, Deadline deadline, Logger& logger) {
  const std::string& id = launch.discovery.launch_id;
  const std::string path = coordinator_file_path(launch.discovery.folder, id);
  const auto started = std::chrono::steady_clock::now();
  std::chrono::milliseconds pause{5};
  bool told_foreign = false;
  for (;;) {
    if (const std::optional<std::string> content = launch.discovery.files->read(path)) {
      if (auto address = decode_coordinator_file(*content, id)) {
        address_ = std::move(*address);
        logger.debug("rank {}: coordinator {} from {}", launch.rank, address_, path);
        return;
      }
      if (!told_foreign) {
        logger.warn("rank {}: ignoring {}: not a coordinator file of mpirun launch {}", launch.rank,
                    path, id);
        told_foreign = true;
      }
    }
    if (deadline.expired()) {
      throw TimeoutError(
          0, "coordinator discovery",
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                started),
          fmt::format("rank 0 to publish its address in {} (mpirun launch {}); the output "
                      "folder must be the same shared folder on every host, or set "
                      "DTRAIN_COORDINATOR=host:port",
                      path, id));
    }
    std::this_thread::sleep_for(std::min(pause, deadline.remaining()));
    pause = std::min(pause * 2, std::chrono::milliseconds(100));
  }
}

}  // namespace dtrain::comm
