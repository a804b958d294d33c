// The shared-memory data path of private-ipc links (shm_segment.h,
// ClientOptions::shm, ServerOptions::shm; docs/parameter-server.md "Shared
// memory for same-host links"): sync training through it ends with every
// server's state and every worker's parameters equal to the socket path's to
// the bit (SGD with momentum and Adam, one and two servers), while the
// gradients provably did not go through the socket; a segment open to
// others, a forged descriptor, a stale one and one out of bounds are refused
// by name and change nothing.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "comm/wire/wire.h"
#include "ps/client.h"
#include "ps/messages.h"
#include "ps/server.h"
#include "ps/shm_segment.h"
#include "ps_test_util.h"
#include "testing/fault_fs.h"
#include "testing/optimizer_configs.h"

namespace dtrain::ps {
namespace {

using namespace std::chrono_literals;

// S servers on threads, bound on ipc in a private folder.
class IpcJob {
 public:
  IpcJob(int servers, int workers, const optim::OptimizerConfig& optimizer, bool shm)
      : auth_("ps-shm", "s3cret"), workers_(workers) {
    for (int s = 0; s < servers; ++s) {
      ServerOptions o;
      o.server = s;
      o.num_servers = servers;
      o.num_workers = workers;
      o.optimizer = optimizer;
      o.bind_endpoint = "ipc://" + folder_.path() + "/server-" + std::to_string(s);
      o.private_ipc = true;
      o.shm = shm;
      servers_.push_back(std::make_unique<Server>(o, auth_, log_.logger()));
      endpoints_.push_back(servers_.back()->endpoint());
    }
    for (auto& server : servers_) {
      threads_.emplace_back([&server](std::stop_token stop) { server->run(stop); });
    }
  }
  ~IpcJob() { stop(); }
  void stop() {
    for (auto& t : threads_) t.request_stop();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  std::unique_ptr<Client> client(int worker, bool shm) {
    ClientOptions o;
    o.worker = worker;
    o.num_workers = workers_;
    o.server_endpoints = endpoints_;
    o.timeout = testing::kGenerous;
    o.private_ipc = true;
    o.shm = shm;
    return std::make_unique<Client>(o, auth_, log_.logger());
  }
  const std::string& folder() const { return folder_.path(); }
  const std::vector<std::string>& endpoints() const { return endpoints_; }
  const comm::JobAuth& auth() const { return auth_; }
  Server& server(int s) { return *servers_[static_cast<size_t>(s)]; }

 private:
  dtrain::testing::TempDir folder_;  // mkdtemp: mode 0700, private
  testing::CapturingLog log_;
  comm::JobAuth auth_;
  int workers_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::string> endpoints_;
  std::vector<std::jthread> threads_;  // last: joined before the servers go
};

StateDict model() {
  StateDict m;
  std::vector<float> w(3001), b(17);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * static_cast<float>(i));
  for (size_t i = 0; i < b.size(); ++i) b[i] = 0.01f * static_cast<float>(i);
  m.insert("w", Tensor::from_vector(w, {3001}));
  m.insert("b", Tensor::from_vector(b, {17}));
  return m;
}

// Worker `worker`'s gradient at `step`: different per worker, step and value.
std::vector<Tensor> gradient(int worker, int step) {
  std::vector<Tensor> g;
  for (int64_t n : {3001, 17}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (size_t i = 0; i < v.size(); ++i) {
      v[i] = std::cos(0.11f * static_cast<float>(i) + 1.7f * static_cast<float>(worker) +
                      0.3f * static_cast<float>(step)) /
             static_cast<float>(1 + worker);
    }
    g.push_back(Tensor::from_vector(v, {n}));
  }
  return g;
}

// Worker 0's push of version 0: 8 samples at lr 0.05.
DensePush first_push() {
  DensePush push;
  push.samples = 8;
  push.lr = 0.05f;
  return push;
}

struct Outcome {
  std::vector<StateDict> servers;
  std::vector<std::vector<float>> params;  // per worker, all tensors in turn
  std::vector<uint64_t> bytes_sent;        // per worker
};

constexpr int kWorkers = 2;
constexpr int kSteps = 6;

// kSteps sync steps of kWorkers workers (push_and_pull, as the strategy's step).
Outcome train(int servers, const optim::OptimizerConfig& optimizer, bool shm) {
  IpcJob job(servers, kWorkers, optimizer, shm);
  Outcome out;
  out.params.resize(kWorkers);
  out.bytes_sent.resize(kWorkers);
  std::vector<std::jthread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      std::unique_ptr<Client> client = job.client(w, shm);
      const StateDict initial = model();
      uint64_t version = client->init(initial, {});
      std::vector<Tensor> params{Tensor::zeros({3001}), Tensor::zeros({17})};
      for (int step = 0; step < kSteps; ++step) {
        DensePush push;
        push.samples = 8 + w;
        push.lr = optimizer.lr;
        push.version = version;
        version = client->push_and_pull(gradient(w, step), push, params, version + 1);
      }
      for (const Tensor& t : params) {
        const std::vector<float> v = t.to_vector();
        out.params[static_cast<size_t>(w)].insert(out.params[static_cast<size_t>(w)].end(),
                                                  v.begin(), v.end());
      }
      out.bytes_sent[static_cast<size_t>(w)] = client->bytes_sent();
      client->finish();
    });
  }
  for (auto& t : workers) t.join();
  job.stop();
  for (int s = 0; s < servers; ++s) out.servers.push_back(job.server(s).state_dict());
  return out;
}

void expect_same_bits(const StateDict& a, const StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const auto& [name, ta] = a.entries()[i];
    const auto& [name_b, tb] = b.entries()[i];
    EXPECT_EQ(name, name_b);
    ASSERT_EQ(ta.numel(), tb.numel()) << name;
    EXPECT_EQ(std::memcmp(ta.data(), tb.data(), static_cast<size_t>(ta.numel()) * sizeof(float)), 0)
        << name;
  }
}

void expect_equal_to_the_socket_path(int servers, const optim::OptimizerConfig& optimizer) {
  const Outcome socket = train(servers, optimizer, false);
  const Outcome shm = train(servers, optimizer, true);
  ASSERT_EQ(socket.servers.size(), shm.servers.size());
  for (size_t s = 0; s < shm.servers.size(); ++s)
    expect_same_bits(socket.servers[s], shm.servers[s]);
  constexpr uint64_t kGradientBytes = (3001 + 17) * sizeof(float);
  for (int w = 0; w < kWorkers; ++w) {
    const auto i = static_cast<size_t>(w);
    ASSERT_EQ(socket.params[i].size(), shm.params[i].size());
    EXPECT_EQ(std::memcmp(socket.params[i].data(), shm.params[i].data(),
                          socket.params[i].size() * sizeof(float)),
              0)
        << "worker " << w;
    // The socket path sent every gradient; the shared-memory path only the
    // init's values and descriptors (so this cannot pass by a silent fallback).
    EXPECT_GE(socket.bytes_sent[i], (kSteps + 1) * kGradientBytes) << "worker " << w;
    EXPECT_LT(shm.bytes_sent[i], kGradientBytes + kSteps * 2048) << "worker " << w;
  }
}

TEST(PsShm, SyncMomentumOneServerEqualsTheSocketPathToTheBit) {
  expect_equal_to_the_socket_path(1, dtrain::testing::momentum());
}

TEST(PsShm, SyncMomentumTwoServersEqualsTheSocketPathToTheBit) {
  expect_equal_to_the_socket_path(2, dtrain::testing::momentum());
}

TEST(PsShm, SyncAdamOneServerEqualsTheSocketPathToTheBit) {
  expect_equal_to_the_socket_path(1, dtrain::testing::adam());
}

TEST(PsShm, SyncAdamTwoServersEqualsTheSocketPathToTheBit) {
  expect_equal_to_the_socket_path(2, dtrain::testing::adam());
}

TEST(PsShm, ASegmentOpenToOthersIsRefusedByNameAndNothingChanges) {
  IpcJob job(1, 1, dtrain::testing::momentum(), true);
  std::unique_ptr<Client> client = job.client(0, true);
  client->init(model(), {});
  const std::string path = ShmSegment::path(job.folder(), 0, 0);
  ASSERT_TRUE(std::filesystem::exists(path));
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  std::vector<Tensor> params{Tensor::zeros({3001}), Tensor::zeros({17})};
  const DensePush push = first_push();
  try {
    client->push_and_pull(gradient(0, 0), push, params, 1);
    FAIL() << "a segment of mode 0640 was accepted";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("mode 0640"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  const ServerStats stats = client->stats(0);
  EXPECT_EQ(stats.pushes_applied, 0u);
  EXPECT_EQ(stats.version, 0u);
  EXPECT_GE(stats.requests_rejected, 1u);
}

// A push frame as worker 0 straight on the server's socket (no MAC, no CRC:
// a private-ipc link), its reply decoded.
class ForgedPusher {
 public:
  explicit ForgedPusher(const IpcJob& job)
      : job_(job), context_(1), socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(job.endpoints()[0]);
  }
  Message push(const ShmFloats& floats, uint64_t request_id) {
    Message m;
    m.kind = Kind::kPush;
    m.request_id = request_id;
    m.samples = 1;
    m.lr = 0.05f;
    m.shm = floats;
    const std::vector<std::byte> payload = encode_message(m);
    comm::wire::FrameHeader h;
    h.type = comm::wire::MessageType::kData;
    h.sender = worker_rank(1, 0);
    h.receiver = server_rank(0);
    h.job_id = job_.auth().job_id();
    h.sequence = request_id;
    const comm::JobAuth no_secret("ps-shm", "");
    const auto head = comm::wire::encode_header(h, payload, no_secret, false);
    socket_.send(zmq::const_buffer(head.data(), head.size()), zmq::send_flags::sndmore);
    socket_.send(zmq::const_buffer(payload.data(), payload.size()), zmq::send_flags::none);
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    EXPECT_TRUE(comm::wire::poll_until(std::span(&item, 1), Deadline::after(testing::kGenerous)));
    std::array<zmq::message_t, 2> parts;
    EXPECT_EQ(comm::wire::receive_parts(socket_, parts), 2u);
    return decode_message(
        std::span(static_cast<const std::byte*>(parts[1].data()), parts[1].size()));
  }

 private:
  const IpcJob& job_;
  zmq::context_t context_;
  zmq::socket_t socket_;
};

uint64_t segment_id_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(32);
  uint64_t id = 0;
  in.read(reinterpret_cast<char*>(&id), sizeof id);
  return id;
}

TEST(PsShm, ForgedStaleAndOutOfBoundsDescriptorsAreRefusedByName) {
  IpcJob job(1, 1, dtrain::testing::momentum(), true);
  std::unique_ptr<Client> client = job.client(0, true);
  client->init(model(), {});
  const uint64_t id = segment_id_of(ShmSegment::path(job.folder(), 0, 0));
  ASSERT_NE(id, 0u);
  ForgedPusher forger(job);
  ShmFloats d;
  d.present = true;
  d.count = 3001 + 17;
  d.segment_id = id ^ 1;  // another segment than the one in the file
  d.sequence = 2;
  Message r = forger.push(d, 101);
  EXPECT_EQ(r.status, ReplyStatus::kError);
  EXPECT_NE(r.error.find("does not name worker 0, server 0"), std::string::npos) << r.error;

  d.segment_id = id;  // the right segment, but nothing was written under sequence 2
  r = forger.push(d, 102);
  EXPECT_EQ(r.status, ReplyStatus::kError);
  EXPECT_NE(r.error.find("stale push descriptor (sequence 2)"), std::string::npos) << r.error;

  d.offset = 4;  // one float past the region's end
  r = forger.push(d, 103);
  EXPECT_EQ(r.status, ReplyStatus::kError);
  EXPECT_NE(r.error.find("3018 floats at offset 4 do not fit the push region of 3018 floats"),
            std::string::npos)
      << r.error;

  d.offset = 0;
  d.count = uint64_t{1} << 40;
  r = forger.push(d, 104);
  EXPECT_EQ(r.status, ReplyStatus::kError);
  EXPECT_NE(r.error.find("do not fit the push region"), std::string::npos) << r.error;

  const ServerStats stats = client->stats(0);
  EXPECT_EQ(stats.pushes_applied, 0u);
  EXPECT_EQ(stats.version, 0u);
  EXPECT_EQ(stats.requests_rejected, 4u);
  // The worker's own push through its segment still goes through afterwards.
  std::vector<Tensor> params{Tensor::zeros({3001}), Tensor::zeros({17})};
  EXPECT_EQ(client->push_and_pull(gradient(0, 0), first_push(), params, 1), 1u);
  EXPECT_EQ(client->stats(0).pushes_applied, 1u);
}

TEST(PsShm, DescriptorsDecodeOnlyWhereTheyMayStand) {
  Message push;
  push.kind = Kind::kPush;
  push.request_id = 5;
  push.shm = ShmFloats{true, 12, 0xabc, 0, 8};
  const std::vector<std::byte> bytes = encode_message(push);
  const Message viewed = decode_message(bytes, FloatDecoding::kView);
  EXPECT_TRUE(viewed.shm.present);
  EXPECT_EQ(viewed.shm.count, 12u);
  EXPECT_EQ(viewed.shm.segment_id, 0xabcu);
  EXPECT_EQ(viewed.shm.sequence, 8u);
  EXPECT_TRUE(viewed.float_bytes.empty());
  // Copy decoding (and every other float array) reads the flagged count as a
  // count far beyond the payload.
  EXPECT_THROW(decode_message(bytes, FloatDecoding::kCopy), DataError);
  Message rows;
  rows.kind = Kind::kPushRows;
  rows.shm = push.shm;
  EXPECT_THROW(decode_message(encode_message(rows), FloatDecoding::kView), DataError);
  Message both = push;
  both.floats = {1.0f};
  EXPECT_THROW(encode_message(both), UsageError);
}

TEST(PsShm, TheWorkerRemovesItsSegmentsAndAnOffSwitchMakesNone) {
  IpcJob job(2, 2, dtrain::testing::momentum(), true);
  {
    std::unique_ptr<Client> client = job.client(0, true);
    client->init(model(), {});
    EXPECT_TRUE(std::filesystem::exists(ShmSegment::path(job.folder(), 0, 0)));
    EXPECT_TRUE(std::filesystem::exists(ShmSegment::path(job.folder(), 0, 1)));
    struct stat st {};
    ASSERT_EQ(::stat(ShmSegment::path(job.folder(), 0, 1).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    client->finish();
  }
  EXPECT_FALSE(std::filesystem::exists(ShmSegment::path(job.folder(), 0, 0)));
  std::unique_ptr<Client> off = job.client(1, false);
  off->init(model(), {});
  EXPECT_FALSE(std::filesystem::exists(ShmSegment::path(job.folder(), 1, 0)));
  EXPECT_FALSE(std::filesystem::exists(ShmSegment::path(job.folder(), 1, 1)));
}

}  // namespace
}  // namespace dtrain::ps
