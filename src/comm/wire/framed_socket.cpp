#include "comm/wire/framed_socket.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <utility>

#include "core/error.h"
#include "core/tsan_annotations.h"

namespace dtrain::comm::wire {

namespace {

// Invalid messages dropped per try_receive() before it returns to its caller.
constexpr int kMaxDropsPerCall = 256;

std::span<const std::byte> bytes_of(const zmq::message_t& m) {
  return {static_cast<const std::byte*>(m.data()), m.size()};
}

std::string describe_sender(uint32_t sender) {
  return sender == kCoordinator ? std::string("the coordinator") : fmt::format("rank {}", sender);
}

// ZeroMQ's deallocation callback for a payload handed over without a copy.
void free_payload(void* /*data*/, void* hint) {
  std::unique_ptr<std::vector<std::byte>> owned(static_cast<std::vector<std::byte>*>(hint));
}

// The same for a shared payload: drops ZeroMQ's reference.
void release_shared_payload(void* /*data*/, void* hint) {
  std::unique_ptr<std::shared_ptr<const std::vector<std::byte>>> owned(
      static_cast<std::shared_ptr<const std::vector<std::byte>>*>(hint));
}

}  // namespace

MessageTypes::MessageTypes(std::initializer_list<MessageType> types) {
  for (MessageType t : types) {
    DTRAIN_CHECK(static_cast<uint8_t>(t) < 32, "message type {} outside the set's range",
                 static_cast<int>(t));
    mask_ |= uint32_t{1} << static_cast<uint8_t>(t);
  }
}

std::string MessageTypes::describe() const {
  std::vector<std::string_view> names;
  for (uint8_t t = 0; t < 32; ++t) {
    if (((mask_ >> t) & 1) != 0) names.push_back(to_string(static_cast<MessageType>(t)));
  }
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " or " : ", ";
    out += names[i];
  }
  return out.empty() ? std::string("nothing") : out;
}

FrameHeader check_header(std::span<const std::byte> header_bytes, const FrameLimits& limits,
                         const JobAuth& auth, const MessageTypes& accepted) {
  const FrameHeader header = decode_header(header_bytes, limits, auth);
  if (!accepted.contains(header.type)) {
    throw DataError(fmt::format("wire frame rejected: a {} frame from {}; this receiver takes {}",
                                to_string(header.type), describe_sender(header.sender),
                                accepted.describe()));
  }
  return header;
}

size_t receive_parts(zmq::socket_t& socket, std::span<zmq::message_t> parts) {
  size_t count = 0;
  zmq::message_t surplus;
  while (true) {
    zmq::message_t& part = count < parts.size() ? parts[count] : surplus;
    // The parts of a message arrive together: only the first can be missing.
    if (!socket.recv(part, zmq::recv_flags::dontwait)) return count;
    // Over inproc the part is the sender's buffer, handed over by libzmq's
    // own (uninstrumented) synchronisation: send_parts() released it.
    tsan_acquire(part.data());
    ++count;
    if (!part.more()) return count;
  }
}

std::optional<uint16_t> monitor_event(const zmq::message_t& first_part) {
  if (first_part.size() < sizeof(uint16_t) + sizeof(uint32_t)) return std::nullopt;
  uint16_t event = 0;
  // ZeroMQ's own layout in host byte order, not a dtrain wire format.
  std::memcpy(&event, first_part.data(), sizeof event);
  return event;
}

bool is_inproc(std::string_view endpoint) {
  constexpr std::string_view kInproc = "inproc://";
  return endpoint.substr(0, kInproc.size()) == kInproc;
}

void check_private_ipc_folder(const std::string& ipc_endpoint, std::string_view who) {
  constexpr std::string_view kIpc = "ipc://";
  if (ipc_endpoint.rfind(kIpc, 0) != 0) {
    throw ConfigError(
        fmt::format("{}: frames without MAC need an ipc endpoint in a private folder, not '{}'",
                    who, ipc_endpoint));
  }
  const std::string folder =
      std::filesystem::path(ipc_endpoint.substr(kIpc.size())).parent_path().string();
  const std::string hint =
      "frames go without MAC and CRC only in a folder that no other user may enter (mode 0700, "
      "owned by this user; docs/security.md)";
  struct stat st {};
  if (folder.empty() || ::lstat(folder.c_str(), &st) != 0) {
    throw ConfigError(fmt::format("{}: cannot check the ipc folder '{}' of {}: {}; {}", who, folder,
                                  ipc_endpoint, folder.empty() ? "no folder" : std::strerror(errno),
                                  hint));
  }
  const uid_t self = ::geteuid();
  const unsigned mode = st.st_mode & 07777;
  if (!S_ISDIR(st.st_mode) || st.st_uid != self || (st.st_mode & 0077) != 0) {
    const char* what = !S_ISDIR(st.st_mode) ? "is not a directory (a symlink?)"
                       : st.st_uid != self  ? "belongs to another user"
                                            : "is open to group or others";
    throw ConfigError(fmt::format(
        "{}: the ipc folder '{}' {} (owner uid {}, mode {:04o}; this process runs as uid {}); {}",
        who, folder, what, st.st_uid, mode, self, hint));
  }
}

bool poll_until(std::span<zmq::pollitem_t> items, Deadline deadline) {
  for (zmq::pollitem_t& item : items) item.revents = 0;
  return zmq::poll(items.data(), items.size(), deadline.remaining()) > 0;
}

std::optional<uint8_t> RejectedFrame::raw_type() const {
  if (header_bytes.size() != kHeaderBytes) return std::nullopt;
  return std::to_integer<uint8_t>(header_bytes[5]);
}

FramedSocket::FramedSocket(zmq::context_t& context, Role role, const std::string& endpoint,
                           FramedSocketOptions options, const JobAuth& auth, Logger& logger)
    : options_(std::move(options)),
      role_(role),
      auth_(auth),
      frame_auth_(options_.private_ipc ? JobAuth(std::string_view(), std::string_view()) : auth),
      socket_(context, role == Role::kRouter ? zmq::socket_type::router : zmq::socket_type::dealer),
      drops_(logger, fmt::format("{}: dropped an inbound frame", options_.name)) {
  if (options_.private_ipc) {
    if (auth_.curve() != nullptr) {
      throw ConfigError(fmt::format(
          "{}: private_ipc drops the frame MAC, security.encrypt asks for CURVE: pick one",
          options_.name));
    }
    if (!is_inproc(endpoint)) check_private_ipc_folder(endpoint, options_.name);
    options_.crc = false;
  }
  if (!options_.also_bind.empty() && (role != Role::kRouter || !is_inproc(options_.also_bind))) {
    throw ConfigError(
        fmt::format("{}: a second endpoint is for a ROUTER and must be inproc://, not '{}'",
                    options_.name, options_.also_bind));
  }
  socket_.set(zmq::sockopt::linger, static_cast<int>(options_.linger.count()));
  if (options_.link) shaper_ = std::make_unique<LinkShaper>(*options_.link);
  if (options_.unbounded_queues) {
    socket_.set(zmq::sockopt::rcvhwm, 0);
    socket_.set(zmq::sockopt::sndhwm, 0);
  }
  // ZeroMQ refuses any part longer than the payload limit (or the header).
  const uint64_t max_part = std::max<uint64_t>(options_.limits.max_payload_bytes, kHeaderBytes);
  socket_.set(zmq::sockopt::maxmsgsize,
              static_cast<int64_t>(std::min<uint64_t>(
                  max_part, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))));
  // security.encrypt: the ROUTER is the CURVE server, the DEALER its client
  // (comm/wire/curve.h).
  if (auth_.curve() != nullptr) {
    if (role == Role::kRouter) {
      zap_ = secure_binding_socket(context, socket_, auth_, options_.name, logger);
    } else {
      secure_connecting_socket(socket_, auth_);
      watch_ = std::make_unique<HandshakeWatch>(context, socket_, options_.name);
    }
  }
  try {
    if (role == Role::kRouter) {
      socket_.bind(endpoint);
      endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
      if (!options_.also_bind.empty()) socket_.bind(options_.also_bind);
    } else {
      socket_.connect(endpoint);
      endpoint_ = endpoint;
    }
  } catch (const zmq::error_t& e) {
    throw CommError(
        options_.peer, options_.name,
        fmt::format("cannot {} {}: {}", role == Role::kRouter ? "listen on" : "connect to",
                    endpoint, e.what()));
  }
}

HeaderBytes FramedSocket::header_for(FrameHeader header, std::span<const std::byte> payload) const {
  header.sender = options_.rank;
  header.job_id = auth_.job_id();
  return encode_header(header, payload, frame_auth_, options_.crc);
}

bool FramedSocket::send_parts(std::string_view identity, const HeaderBytes& head,
                              zmq::message_t& body) {
  DTRAIN_CHECK((role_ == Role::kRouter) != identity.empty(),
               "{}: a ROUTER sends to a routing id, a DEALER to its peer", options_.name);
  // Never blocks: a full queue refuses ("would block", false), as a lost
  // message would be; the caller's deadline covers the reply it awaits.
  const auto flags = zmq::send_flags::dontwait;
  if (shaper_) shaper_->wait_for_release(identity.size() + head.size() + body.size());
  if (!identity.empty() && !socket_.send(zmq::const_buffer(identity.data(), identity.size()),
                                         flags | zmq::send_flags::sndmore)) {
    return false;
  }
  // Each part's buffer, once filled, is handed to the receiving thread as it
  // is over inproc (receive_parts() acquires it; core/tsan_annotations.h).
  zmq::message_t head_part(head.data(), head.size());
  tsan_release(head_part.data());
  tsan_release(body.data());
  return socket_.send(head_part, flags | zmq::send_flags::sndmore).has_value() &&
         socket_.send(body, flags).has_value();
}

bool FramedSocket::send(std::string_view identity, const FrameHeader& header,
                        std::span<const std::byte> payload) {
  const HeaderBytes head = header_for(header, payload);
  zmq::message_t body(payload.data(), payload.size());
  return send_parts(identity, head, body);
}

bool FramedSocket::send(std::string_view identity, const FrameHeader& header,
                        std::vector<std::byte>&& payload) {
  const HeaderBytes head = header_for(header, payload);
  // The payload (large for dense pushes and pulls) goes without a copy;
  // ZeroMQ frees it through free_payload once sent (or refused).
  auto owned = std::make_unique<std::vector<std::byte>>(std::move(payload));
  void* data = owned->data();
  const size_t size = owned->size();
  zmq::message_t body(data, size, free_payload, owned.get());
  owned.release();
  return send_parts(identity, head, body);
}

bool FramedSocket::send(std::string_view identity, const FrameHeader& header,
                        std::shared_ptr<const std::vector<std::byte>> payload) {
  const HeaderBytes head = header_for(header, *payload);
  // ZeroMQ only reads the bytes; the const_cast is what its C API asks for.
  void* data = const_cast<std::byte*>(payload->data());
  const size_t size = payload->size();
  auto reference =
      std::make_unique<std::shared_ptr<const std::vector<std::byte>>>(std::move(payload));
  zmq::message_t body(data, size, release_shared_payload, reference.get());
  reference.release();
  return send_parts(identity, head, body);
}

void FramedSocket::check_fresh(std::string_view identity, const FrameHeader& header) {
  const MacNonce nonce = mac_nonce(header.mac);
  std::string key(identity);
  key.append(reinterpret_cast<const char*>(header.mac.data()), sizeof nonce.source);
  const auto [it, first] = last_nonce_.try_emplace(std::move(key), nonce.counter);
  if (first) return;
  if (nonce.counter <= it->second) {
    throw DataError(fmt::format(
        "wire frame rejected: a replayed or reordered frame from {} (nonce counter {}, the last "
        "accepted was {})",
        describe_sender(header.sender), nonce.counter, it->second));
  }
  it->second = nonce.counter;
}

void FramedSocket::reject(std::string_view identity, const std::optional<FrameHeader>& header,
                          std::span<const std::byte> header_bytes,
                          std::span<const std::byte> payload, const std::string& reason) {
  drops_.add(reason);
  if (options_.on_reject) {
    options_.on_reject(RejectedFrame{identity, header, header_bytes, payload, reason});
  }
}

std::optional<Frame> FramedSocket::try_receive() {
  const bool routed = role_ == Role::kRouter;
  const size_t expected = routed ? 3 : 2;
  for (int dropped = 0; dropped < kMaxDropsPerCall; ++dropped) {
    std::array<zmq::message_t, 3> parts;
    const size_t count = receive_parts(socket_, parts);
    if (count == 0) return std::nullopt;
    // A ROUTER always has the routing id ZeroMQ put in front.
    const std::string_view identity =
        routed ? std::string_view(static_cast<const char*>(parts[0].data()), parts[0].size())
               : std::string_view();
    const size_t first = routed ? 1 : 0;
    const auto head = count > first ? bytes_of(parts[first]) : std::span<const std::byte>();
    const auto body = count == expected ? bytes_of(parts[first + 1]) : std::span<const std::byte>();
    if (count != expected) {
      reject(identity, std::nullopt, head, body,
             fmt::format("wire frame rejected: a message of {} parts, expected {}", count - first,
                         expected - first));
      continue;
    }
    std::optional<FrameHeader> header;
    try {
      header = check_header(head, options_.limits, frame_auth_, options_.accepted);
      check_payload(*header, head.first<kHeaderBytes>(), body, frame_auth_);
      if ((header->flags & kFlagMac) != 0) check_fresh(identity, *header);
    } catch (const DataError& e) {
      reject(identity, header, head, body, e.what());
      continue;
    }
    Frame frame;
    frame.identity = std::string(identity);
    frame.header = *header;
    frame.body = std::move(parts[first + 1]);
    return frame;
  }
  return std::nullopt;
}

std::optional<Frame> FramedSocket::receive(Deadline deadline) {
  while (true) {
    if (auto frame = try_receive()) return frame;
    if (deadline.expired()) return std::nullopt;
    zmq::pollitem_t item = poll_item();
    poll_until(std::span(&item, 1), deadline);
  }
}

}  // namespace dtrain::comm::wire
