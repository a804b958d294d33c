#include "comm/wire/curve.h"

#include <fmt/format.h>
#include <sodium.h>

#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>

#include "core/error.h"

namespace dtrain::comm::wire {

namespace {

constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
constexpr std::chrono::milliseconds kPollInterval{50};

// The monitor events watched on a CURVE server: the three ways a handshake
// fails, and the end of the monitor (its socket closed).
constexpr int kWatchedEvents = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_MONITOR_STOPPED;

struct ZapTable {
  std::mutex mutex;
  std::map<void*, std::weak_ptr<ZapHandler>> by_context;
  // Monitors started in this process: their inproc endpoints must be
  // unique in a context even after a handler at the same address went.
  uint64_t monitors_started = 0;
};

ZapTable& zap_table() {
  static ZapTable table;
  return table;
}

std::string_view view(const zmq::message_t& part) {
  return {static_cast<const char*>(part.data()), part.size()};
}

// A ZMTP protocol error code (ZMQ_PROTOCOL_ERROR_*) in words.
std::string protocol_error_words(uint32_t code) {
  switch (code) {
    case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
      return "its CURVE HELLO does not open with this socket's key (a peer with another job "
             "secret or key file?)";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
      return "the peer does not speak CURVE (encryption off there, or another mechanism)";
    default:
      break;
  }
  if ((code & 0xf0000000u) == ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED) {
    return fmt::format("the authenticator's reply was not understood (ZAP error 0x{:08x})", code);
  }
  return fmt::format("a malformed or foreign handshake (ZMTP protocol error 0x{:08x})", code);
}

// The reason of a failed handshake in words: NO_DETAIL (an errno),
// PROTOCOL (a ZMQ_PROTOCOL_ERROR_* code) or AUTH (the ZAP status code the
// server answered).
std::string handshake_failure_words(uint16_t event, uint32_t value) {
  switch (event) {
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
      // The connection ended mid-handshake: a plaintext peer that saw the
      // CURVE greeting first and hung up, a server that could not open this
      // client's HELLO, or a peer that left.
      return fmt::format(
          "the connection ended during it ({}; a peer without CURVE or with another key, or "
          "one that left)",
          value != 0 ? std::strerror(static_cast<int>(value)) : "no detail");
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      return protocol_error_words(value);
    default:
      return fmt::format("the server refused this process's CURVE key (ZAP status {})", value);
  }
}

// One event of a socket monitor: two parts, u16 event and u32 value (host
// byte order, as libzmq writes them), then the endpoint.
struct MonitorEvent {
  uint16_t event = 0;
  uint32_t value = 0;
  std::string endpoint;
};

// The next event waiting on `monitor`; nullopt when none is.
std::optional<MonitorEvent> next_event(zmq::socket_t& monitor) {
  while (true) {
    std::array<zmq::message_t, 2> parts;
    size_t count = 0;
    while (count < parts.size() && monitor.recv(parts[count], zmq::recv_flags::dontwait)) {
      const bool more = parts[count++].more();
      if (!more) break;
    }
    if (count == 0) return std::nullopt;
    if (parts[0].size() < sizeof(uint16_t) + sizeof(uint32_t)) continue;
    MonitorEvent e;
    std::memcpy(&e.event, parts[0].data(), sizeof e.event);
    std::memcpy(&e.value, static_cast<const char*>(parts[0].data()) + sizeof e.event,
                sizeof e.value);
    e.endpoint = count > 1 ? std::string(view(parts[1])) : std::string("?");
    return e;
  }
}

// Starts a monitor of `events` on `socket` and returns the PAIR socket that
// receives them, connected before anything else happens on `socket`.
zmq::socket_t start_monitor(zmq::context_t& context, zmq::socket_t& socket, int events,
                            const std::string& who) {
  uint64_t number = 0;
  {
    ZapTable& table = zap_table();
    std::lock_guard lock(table.mutex);
    number = table.monitors_started++;
  }
  const std::string address = fmt::format("inproc://dtrain-curve-monitor-{}", number);
  if (zmq_socket_monitor(socket.handle(), address.c_str(), events) != 0) {
    throw CommError(
        -1, who, fmt::format("cannot monitor the CURVE handshakes: {}", zmq_strerror(zmq_errno())));
  }
  zmq::socket_t monitor(context, zmq::socket_type::pair);
  monitor.set(zmq::sockopt::linger, 0);
  monitor.connect(address);
  return monitor;
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
    : context_(context),
      name_(name),
      client_key_(client_key),
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

void ZapHandler::watch_handshakes(zmq::socket_t& socket) {
  zmq::socket_t monitor = start_monitor(context_, socket, kWatchedEvents, name_);
  std::lock_guard lock(mutex_);
  new_monitors_.push_back(std::move(monitor));
}

void ZapHandler::serve(std::stop_token stop) {
  std::vector<zmq::socket_t> monitors;  // this thread's
  std::vector<zmq::pollitem_t> items;
  while (!stop.stop_requested()) {
    {
      std::lock_guard lock(mutex_);
      for (zmq::socket_t& m : new_monitors_) monitors.push_back(std::move(m));
      new_monitors_.clear();
    }
    items.assign(1, zmq::pollitem_t{socket_.handle(), 0, ZMQ_POLLIN, 0});
    for (zmq::socket_t& m : monitors) items.push_back({m.handle(), 0, ZMQ_POLLIN, 0});
    try {
      if (zmq::poll(items.data(), items.size(), kPollInterval) == 0) continue;
      for (size_t i = monitors.size(); i-- > 0;) {
        if ((items[i + 1].revents & ZMQ_POLLIN) != 0 && !read_monitor(monitors[i])) {
          monitors.erase(monitors.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
      if ((items[0].revents & ZMQ_POLLIN) != 0) answer_request();
    } catch (const zmq::error_t&) {
      return;  // the context is terminating
    }
  }
}

bool ZapHandler::read_monitor(zmq::socket_t& monitor) {
  while (const std::optional<MonitorEvent> e = next_event(monitor)) {
    if (e->event == ZMQ_EVENT_MONITOR_STOPPED) return false;
    // A server's HANDSHAKE_FAILED_AUTH is this handler's own refusal,
    // counted by answer_request().
    if (e->event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) continue;
    refusals_.add(fmt::format("on {}: handshake failed: {}", e->endpoint,
                              handshake_failure_words(e->event, e->value)));
  }
  return true;
}

void ZapHandler::answer_request() {
  // A ZAP request (RFC 27): version, request id, domain, address, routing
  // id, mechanism, then the mechanism's credentials (CURVE: the client's
  // 32-byte long-term public key). The reply: version, request id, status
  // code, status text, user id, metadata.
  std::array<zmq::message_t, 8> parts;
  size_t count = 0;
  bool more = true;
  while (more) {
    zmq::message_t part;
    if (!socket_.recv(part, zmq::recv_flags::dontwait)) break;
    more = part.more();
    if (count < parts.size()) parts[count] = std::move(part);
    ++count;
  }
  if (count < 6) return;  // not a ZAP request; REP needs a reply only to a request
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
  socket_.send(zmq::buffer(std::string_view("1.0")), zmq::send_flags::sndmore);
  socket_.send(parts[1], zmq::send_flags::sndmore);
  socket_.send(zmq::buffer(status), zmq::send_flags::sndmore);
  socket_.send(zmq::buffer(text), zmq::send_flags::sndmore);
  socket_.send(zmq::buffer(std::string_view()), zmq::send_flags::sndmore);
  socket_.send(zmq::buffer(std::string_view()), zmq::send_flags::none);
}

HandshakeWatch::HandshakeWatch(zmq::context_t& context, zmq::socket_t& socket,
                               const std::string& name)
    : monitor_(start_monitor(context, socket,
                             ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH,
                             name)) {}

std::string HandshakeWatch::failures() {
  while (const std::optional<MonitorEvent> e = next_event(monitor_)) {
    ++failed_;
    last_ = handshake_failure_words(e->event, e->value);
  }
  if (failed_ == 0) return "";
  return fmt::format(
      "the CURVE handshake with it failed {} time(s), the last: {}; another job secret or key "
      "file?",
      failed_, last_);
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
  zap->watch_handshakes(socket);
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
