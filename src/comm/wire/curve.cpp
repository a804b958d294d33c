#include "comm/wire/curve.h"

#include <fmt/format.h>
#include <sodium.h>

#include <array>
#include <chrono>
#include <map>
#include <mutex>
#include <string_view>

#include "core/error.h"

namespace dtrain::comm::wire {

namespace {

constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
constexpr std::chrono::milliseconds kPollInterval{50};

struct ZapTable {
  std::mutex mutex;
  std::map<void*, std::weak_ptr<ZapHandler>> by_context;
};

ZapTable& zap_table() {
  static ZapTable table;
  return table;
}

std::string_view view(const zmq::message_t& part) {
  return {static_cast<const char*>(part.data()), part.size()};
}

}  // namespace

std::shared_ptr<ZapHandler> ZapHandler::acquire(zmq::context_t& context, const CurveKey& client_key,
                                                const std::string& name, Logger& logger) {
  ZapTable& table = zap_table();
  std::lock_guard lock(table.mutex);
  std::weak_ptr<ZapHandler>& slot = table.by_context[context.handle()];
  if (std::shared_ptr<ZapHandler> live = slot.lock()) {
    if (sodium_memcmp(live->client_key_.data(), client_key.data(), client_key.size()) != 0) {
      throw UsageError(fmt::format(
          "{}: this ZeroMQ context already authenticates another job's CURVE keys", name));
    }
    return live;
  }
  auto handler = std::make_shared<ZapHandler>(Private{}, context, client_key, name, logger);
  slot = handler;
  // Drop the entries of handlers that are gone (contexts closed since).
  std::erase_if(table.by_context, [](const auto& entry) { return entry.second.expired(); });
  return handler;
}

ZapHandler::ZapHandler(Private, zmq::context_t& context, const CurveKey& client_key,
                       const std::string& name, Logger& logger)
    : client_key_(client_key),
      socket_(context, zmq::socket_type::rep),
      refusals_(logger, fmt::format("{}: refused a CURVE connection", name)) {
  socket_.set(zmq::sockopt::linger, 0);
  // A handler of this context that was just closed may hold the endpoint
  // for a moment (libzmq releases it on its reaper thread).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (;;) {
    try {
      socket_.bind(kZapEndpoint);
      break;
    } catch (const zmq::error_t& e) {
      if (e.num() != EADDRINUSE || std::chrono::steady_clock::now() > give_up) {
        throw CommError(
            -1, name,
            fmt::format("cannot start the CURVE authenticator on {}: {}", kZapEndpoint, e.what()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  thread_ = std::jthread([this](std::stop_token stop) { serve(stop); });
}

ZapHandler::~ZapHandler() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
  sodium_memzero(client_key_.data(), client_key_.size());
}

void ZapHandler::serve(std::stop_token stop) {
  // A ZAP request (RFC 27): version, request id, domain, address, routing
  // id, mechanism, then the mechanism's credentials (CURVE: the client's
  // 32-byte long-term public key). The reply: version, request id, status
  // code, status text, user id, metadata.
  std::array<zmq::message_t, 8> parts;
  while (!stop.stop_requested()) {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    try {
      if (zmq::poll(&item, 1, kPollInterval) == 0) continue;
    } catch (const zmq::error_t&) {
      return;  // the context is terminating
    }
    size_t count = 0;
    bool more = true;
    while (more) {
      zmq::message_t part;
      if (!socket_.recv(part, zmq::recv_flags::dontwait)) break;
      more = part.more();
      if (count < parts.size()) parts[count] = std::move(part);
      ++count;
    }
    if (count < 6) continue;  // not a ZAP request; REP needs a reply only to a request
    const std::string_view address = view(parts[3]);
    const std::string_view mechanism = view(parts[5]);
    bool ok = false;
    std::string why;
    if (mechanism != "CURVE") {
      why = fmt::format("from {}: mechanism {} (not CURVE)", address, mechanism);
    } else if (count < 7 || parts[6].size() != kCurveKeyBytes) {
      why = fmt::format("from {}: no CURVE key", address);
    } else if (sodium_memcmp(parts[6].data(), client_key_.data(), kCurveKeyBytes) != 0) {
      why = fmt::format("from {}: unknown public key", address);
    } else {
      ok = true;
    }
    if (ok) {
      accepted_.fetch_add(1);
    } else {
      refusals_.add(why);
    }
    const std::string_view status = ok ? "200" : "400";
    const std::string_view text = ok ? "OK" : "unknown public key";
    try {
      socket_.send(zmq::buffer(std::string_view("1.0")), zmq::send_flags::sndmore);
      socket_.send(parts[1], zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(status), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(text), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(std::string_view()), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(std::string_view()), zmq::send_flags::none);
    } catch (const zmq::error_t&) {
      return;
    }
  }
}

std::shared_ptr<ZapHandler> secure_binding_socket(zmq::context_t& context, zmq::socket_t& socket,
                                                  const JobAuth& auth, const std::string& name,
                                                  Logger& logger) {
  const CurveKeys* keys = auth.curve();
  DTRAIN_CHECK(keys != nullptr, "secure_binding_socket without CURVE keys");
  std::shared_ptr<ZapHandler> zap =
      ZapHandler::acquire(context, keys->client.public_key, name, logger);
  socket.set(zmq::sockopt::curve_server, true);
  socket.set(zmq::sockopt::curve_secretkey,
             zmq::const_buffer(keys->server.secret_key.data(), kCurveKeyBytes));
  return zap;
}

void secure_connecting_socket(zmq::socket_t& socket, const JobAuth& auth) {
  const CurveKeys* keys = auth.curve();
  DTRAIN_CHECK(keys != nullptr, "secure_connecting_socket without CURVE keys");
  socket.set(zmq::sockopt::curve_serverkey,
             zmq::const_buffer(keys->server.public_key.data(), kCurveKeyBytes));
  socket.set(zmq::sockopt::curve_publickey,
             zmq::const_buffer(keys->client.public_key.data(), kCurveKeyBytes));
  socket.set(zmq::sockopt::curve_secretkey,
             zmq::const_buffer(keys->client.secret_key.data(), kCurveKeyBytes));
}

std::string z85_key(const CurveKey& key) {
  std::array<char, 41> text{};
  DTRAIN_CHECK(zmq_z85_encode(text.data(), key.data(), key.size()) != nullptr, "z85 encode failed");
  return std::string(text.data(), 40);
}

}  // namespace dtrain::comm::wire
