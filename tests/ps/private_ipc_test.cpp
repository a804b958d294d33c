// A ps server and its worker on ipc in a private folder (ServerOptions::
// private_ipc, ClientOptions::private_ipc): the frames carry neither MAC nor
// CRC; the checks that stay (length, job id, the frame sequence against the
// request id) drop a bad frame with its reason; a folder others may enter is
// refused by both ends.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <thread>
#include <zmq.hpp>

#include "comm/wire/framed_socket.h"
#include "comm/wire/wire.h"
#include "ps/client.h"
#include "ps/messages.h"
#include "ps/server.h"
#include "ps_test_util.h"
#include "testing/junk_frames.h"

namespace dtrain::ps {
namespace {

using namespace std::chrono_literals;
using dtrain::testing::LineLog;

struct PrivateFolder {
  PrivateFolder() {
    std::string pattern = (std::filesystem::temp_directory_path() / "dtrain-ps-XXXXXX").string();
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);  // mode 0700
    path = pattern;
  }
  ~PrivateFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string path;
};

TEST(PsPrivateIpc, AWorkerTrainsWithoutMacAndBadFramesAreDroppedByName) {
  LineLog log;
  const comm::JobAuth auth("ps-private", "s3cret");
  PrivateFolder folder;
  ServerOptions options;
  options.consistency = Consistency::kAsync;
  options.optimizer.lr = 1.0f;
  options.bind_endpoint = "ipc://" + folder.path + "/server-0";
  options.private_ipc = true;
  Server server(options, auth, log.logger());
  std::jthread serving([&](std::stop_token stop) { server.run(stop); });

  // A raw DEALER of worker 0's rank: a frame whose header sequence is not
  // its request id, one whose length disagrees, then a stats request it
  // reads the reply of.
  zmq::context_t context(1);
  zmq::socket_t raw(context, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(options.bind_endpoint);
  const comm::JobAuth no_secret("ps-private", "");
  auto send_raw = [&](uint64_t sequence, const std::vector<std::byte>& payload, size_t extra) {
    comm::wire::FrameHeader h;
    h.type = comm::wire::MessageType::kData;
    h.sender = worker_rank(1, 0);
    h.receiver = server_rank(0);
    h.job_id = auth.job_id();
    h.sequence = sequence;
    const auto head = comm::wire::encode_header(h, payload, no_secret, false);
    std::vector<std::byte> body = payload;
    body.resize(body.size() + extra);
    raw.send(zmq::const_buffer(head.data(), head.size()), zmq::send_flags::sndmore);
    raw.send(zmq::const_buffer(body.data(), body.size()), zmq::send_flags::none);
  };
  Message stats;
  stats.kind = Kind::kStats;
  stats.request_id = 7;
  send_raw(8, encode_message(stats), 0);  // sequence 8, request id 7
  send_raw(7, encode_message(stats), 4);  // 4 bytes more than the header says
  send_raw(7, encode_message(stats), 0);
  zmq::message_t head;
  zmq::message_t body;
  zmq::pollitem_t item{raw.handle(), 0, ZMQ_POLLIN, 0};
  ASSERT_TRUE(comm::wire::poll_until(std::span(&item, 1), Deadline::after(60s)));
  ASSERT_TRUE(raw.recv(head, zmq::recv_flags::dontwait));
  ASSERT_TRUE(raw.recv(body, zmq::recv_flags::dontwait));
  const comm::wire::FrameHeader reply = comm::wire::decode_header(
      std::span(static_cast<const std::byte*>(head.data()), head.size()),
      comm::wire::FrameLimits{auth.job_id(), 1, worker_rank(1, 0), 1 << 20}, no_secret);
  EXPECT_EQ(reply.flags, 0u);  // the server's reply: neither CRC nor MAC
  EXPECT_EQ(reply.sequence, 7u);
  EXPECT_EQ(log.count("ps server 0: dropped an inbound frame (1 so far): from rank 1: ps stats "
                      "request: the frame's sequence 8 does not match the payload's request id 7"),
            1u)
      << log.all();
  EXPECT_EQ(log.count("ps server 0: dropped an inbound frame (2 so far): wire frame rejected: "
                      "payload is 28 bytes but the header says 24"),
            1u)
      << log.all();

  ClientOptions co;
  co.server_endpoints = {options.bind_endpoint};
  co.timeout = 30s;
  co.private_ipc = true;
  Client client(co, auth, Logger::null());
  testing::expect_one_async_step(client);
  EXPECT_EQ(client.stats(0).frames_dropped, 2u);
  client.finish();
}

TEST(PsPrivateIpc, AFolderOthersMayEnterIsRefusedByServerAndWorker) {
  const comm::JobAuth auth("ps-private-refused", "s3cret");
  PrivateFolder folder;
  ASSERT_EQ(chmod(folder.path.c_str(), 0750), 0);
  ServerOptions options;
  options.bind_endpoint = "ipc://" + folder.path + "/server-0";
  options.private_ipc = true;
  try {
    Server server(options, auth, Logger::null());
    ADD_FAILURE() << "the server started in a folder of mode 0750";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ps server 0: the ipc folder '" + folder.path +
                                         "' is open to group or others"),
              std::string::npos)
        << e.what();
  }
  ClientOptions co;
  co.server_endpoints = {options.bind_endpoint};
  co.private_ipc = true;
  try {
    Client client(co, auth, Logger::null());
    ADD_FAILURE() << "the worker connected into a folder of mode 0750";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("mode 0750"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dtrain::ps
