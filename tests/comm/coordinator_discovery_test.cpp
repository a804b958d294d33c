// Meeting the coordinator: the mpirun file handshake over an in-memory file
// system (ranks as threads, a real rendezvous on loopback), and rank 0's
// server for a given coordinator.
#include "comm/rendezvous/coordinator_discovery.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <mutex>

#include "core/error.h"

namespace dtrain::comm {
namespace {

using namespace std::chrono_literals;

// Files in memory; readers can wait until a path was read `count` times.
class MemoryFiles final : public CoordinatorFiles {
 public:
  void write_atomic(const std::string& path, const std::string& data) override {
    std::lock_guard lock(mutex_);
    files_[path] = data;
  }
  std::optional<std::string> read(const std::string& path) override {
    std::lock_guard lock(mutex_);
    ++reads_[path];
    read_cv_.notify_all();
    const auto it = files_.find(path);
    if (it == files_.end()) return std::nullopt;
    return it->second;
  }
  void remove(const std::string& path) override {
    std::lock_guard lock(mutex_);
    files_.erase(path);
  }
  bool has(const std::string& path) {
    std::lock_guard lock(mutex_);
    return files_.count(path) > 0;
  }
  void wait_for_reads(const std::string& path, int count) {
    std::unique_lock lock(mutex_);
    read_cv_.wait(lock, [&] { return reads_[path] >= count; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable read_cv_;
  std::map<std::string, std::string> files_;
  std::map<std::string, int> reads_;
};

LaunchInfo mpirun_rank(int rank, int world, MemoryFiles& files, const std::string& id = "77-a") {
  LaunchInfo info;
  info.rank = rank;
  info.world_size = world;
  info.source = "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE";
  info.discovery.launch_id = id;
  info.discovery.folder = "/out";
  info.discovery.files = &files;
  return info;
}

// Rank `launch.rank` meets the coordinator and registers: its table.
std::vector<PeerEndpoint> join(const LaunchInfo& launch, const JobAuth& auth) {
  CoordinatorMeeting meeting(launch, auth, Deadline::after(20s), Logger::null());
  auto server = meeting.take_server();
  const PeerEndpoint self{launch.rank, "host",
                          fmt::format("tcp://127.0.0.1:{}", 9000 + launch.rank), ""};
  return rendezvous(meeting.address(), self, launch.world_size, auth, Deadline::after(20s),
                    Logger::null());
}

TEST(CoordinatorDiscovery, MpirunLaunchId) {
  EXPECT_EQ(mpirun_launch_id({{"PMIX_NAMESPACE", "1185939457"},
                              {"OMPI_MCA_ess_base_jobid", "1"},
                              {"OMPI_MCA_orte_precondition_transports", "1144-d4ec"}}),
            "1185939457-1144-d4ec");
  EXPECT_EQ(mpirun_launch_id({{"OMPI_MCA_ess_base_jobid", "42"}}), "42");
  EXPECT_EQ(mpirun_launch_id({{"PMIX_NAMESPACE", "prterun-vm-123@1"}}), "prterun-vm-123_1");
  EXPECT_EQ(mpirun_launch_id({{"OMPI_COMM_WORLD_RANK", "0"}}), "");
}

TEST(CoordinatorDiscovery, MpirunWithoutACoordinatorDiscoversByFile) {
  LaunchOverrides o;
  o.require_coordinator = true;
  const LaunchInfo info = resolve_launch_env(
      {{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"PMIX_NAMESPACE", "99"}}, o);
  EXPECT_EQ(info.coordinator, "");
  EXPECT_EQ(info.discovery.launch_id, "99");
  // A given coordinator wins: no file.
  const LaunchInfo given = resolve_launch_env({{"OMPI_COMM_WORLD_RANK", "1"},
                                               {"OMPI_COMM_WORLD_SIZE", "2"},
                                               {"PMIX_NAMESPACE", "99"},
                                               {"DTRAIN_COORDINATOR", "h:1"}});
  EXPECT_EQ(given.discovery.launch_id, "");
}

TEST(CoordinatorDiscovery, FileContent) {
  const std::string file = encode_coordinator_file("7-x", "10.0.0.1:4000");
  EXPECT_EQ(file, "dtrain coordinator 1\nlaunch 7-x\naddress 10.0.0.1:4000\n");
  EXPECT_EQ(decode_coordinator_file(file, "7-x"), "10.0.0.1:4000");
  EXPECT_EQ(decode_coordinator_file(file, "7"), std::nullopt);  // another launch
  EXPECT_EQ(decode_coordinator_file(file, "7-xy"), std::nullopt);
  EXPECT_EQ(decode_coordinator_file(file.substr(0, file.size() - 1), "7-x"), std::nullopt);
  EXPECT_EQ(decode_coordinator_file(encode_coordinator_file("7-x", "nohost"), "7-x"), std::nullopt);
  EXPECT_EQ(decode_coordinator_file("", "7-x"), std::nullopt);
  EXPECT_EQ(coordinator_file_path("/out", "7-x"), "/out/.dtrain-coordinator-7-x");
}

TEST(CoordinatorDiscovery, RankZeroPublishesTheOthersFindItAndTheFileGoes) {
  MemoryFiles files;
  const JobAuth auth("discovery", "secret");
  const std::string path = coordinator_file_path("/out", "77-a");
  std::vector<std::future<std::vector<PeerEndpoint>>> ranks;
  for (int r = 2; r >= 0; --r) {
    ranks.push_back(
        std::async(std::launch::async, [&, r] { return join(mpirun_rank(r, 3, files), auth); }));
  }
  for (auto& f : ranks) EXPECT_EQ(f.get().size(), 3u);
  EXPECT_FALSE(files.has(path));  // rank 0 removed it once its meeting ended
}

TEST(CoordinatorDiscovery, AFileOfAnotherLaunchIsIgnored) {
  MemoryFiles files;
  const JobAuth auth("discovery", "secret");
  const std::string path = coordinator_file_path("/out", "77-a");
  // An earlier launch left its file under this name (same job id, another
  // launch) and another launch's file lies beside it.
  files.write_atomic(path, encode_coordinator_file("77-old", "127.0.0.1:1"));
  files.write_atomic(coordinator_file_path("/out", "76-b"),
                     encode_coordinator_file("76-b", "127.0.0.1:2"));
  auto rank1 = std::async(std::launch::async, [&] { return join(mpirun_rank(1, 2, files), auth); });
  files.wait_for_reads(path, 2);  // rank 1 has seen (and passed over) the stale file
  auto rank0 = std::async(std::launch::async, [&] { return join(mpirun_rank(0, 2, files), auth); });
  EXPECT_EQ(rank0.get().size(), 2u);
  EXPECT_EQ(rank1.get().size(), 2u);
  EXPECT_FALSE(files.has(path));
}

TEST(CoordinatorDiscovery, AMissingFileTimesOutNamingItAndTheLaunch) {
  MemoryFiles files;
  const JobAuth auth("discovery", "secret");
  try {
    CoordinatorMeeting meeting(mpirun_rank(1, 2, files), auth, Deadline::after(50ms),
                               Logger::null());
    ADD_FAILURE() << "no timeout";
  } catch (const TimeoutError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("coordinator discovery with rank 0: timed out after"), std::string::npos)
        << what;
    EXPECT_NE(what.find("waiting for rank 0 to publish its address in "
                        "/out/.dtrain-coordinator-77-a (mpirun launch 77-a)"),
              std::string::npos)
        << what;
  }
}

TEST(CoordinatorDiscovery, NoCoordinatorAndNoDiscoveryIsAConfigError) {
  LaunchInfo info;
  info.rank = 1;
  info.world_size = 2;
  info.source = "DTRAIN_RANK/DTRAIN_WORLD_SIZE";
  try {
    CoordinatorMeeting meeting(info, JobAuth("j", "s"), Deadline::after(1s), Logger::null());
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "rank 1 of 2 (DTRAIN_RANK/DTRAIN_WORLD_SIZE) has no coordinator address: set "
                 "DTRAIN_COORDINATOR=host:port");
  }
}

TEST(CoordinatorDiscovery, AGivenCoordinatorIsHostedAtItsPortAndABusyPortSaysHowToOverride) {
  const JobAuth auth("discovery", "secret");
  RendezvousServer busy("127.0.0.1", 0, 2, auth, Logger::null());
  LaunchInfo info;
  info.world_size = 2;
  info.coordinator = fmt::format("localhost:{}", busy.port());
  info.coordinator_source = "Slurm: the first host of SLURM_STEP_NODELIST";
  try {
    CoordinatorMeeting meeting(info, auth, Deadline::after(1s), Logger::null());
    ADD_FAILURE() << "bound a busy port";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(fmt::format("(coordinator localhost:{} from Slurm: the first host of "
                                    "SLURM_STEP_NODELIST; DTRAIN_COORDINATOR=host:port picks "
                                    "another)",
                                    busy.port())),
              std::string::npos)
        << what;
  }
  // Rank 1 with a given coordinator takes it as it is.
  info.rank = 1;
  const CoordinatorMeeting meeting(info, auth, Deadline::after(1s), Logger::null());
  EXPECT_EQ(meeting.address(), info.coordinator);
}

}  // namespace
}  // namespace dtrain::comm
