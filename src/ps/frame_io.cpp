#include "ps/frame_io.h"

#include <memory>
#include <vector>

#include "core/error.h"

namespace dtrain::ps {

namespace {

// ZeroMQ's deallocation callback for a payload handed over without a copy.
void free_payload(void* /*data*/, void* hint) {
  std::unique_ptr<std::vector<std::byte>> owned(static_cast<std::vector<std::byte>*>(hint));
}

}  // namespace

void send_frame(zmq::socket_t& socket, const std::string& identity, uint32_t sender,
                uint32_t receiver, const Message& message, const comm::JobAuth& auth) {
  auto payload = std::make_unique<std::vector<std::byte>>(encode_message(message));
  comm::wire::FrameHeader header;
  header.type = comm::wire::MessageType::kData;
  header.sender = sender;
  header.receiver = receiver;
  header.job_id = auth.job_id();
  header.sequence = message.request_id;
  const comm::wire::HeaderBytes head = comm::wire::encode_header(header, *payload, auth, true);
  // Sends never block: DEALERs have no high-water mark, and a ROUTER drops
  // frames for a peer that is gone (as the peer's death would anyway); so the
  // results (false only for "would block") carry no information.
  if (!identity.empty()) {
    (void)socket.send(zmq::buffer(identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
  }
  (void)socket.send(zmq::const_buffer(head.data(), head.size()),
                    zmq::send_flags::sndmore | zmq::send_flags::dontwait);
  // The payload (large for dense pushes and pulls) goes without a copy; ZeroMQ
  // frees it through free_payload once sent.
  void* data = payload->data();
  const size_t size = payload->size();
  zmq::message_t body(data, size, free_payload, payload.release());
  (void)socket.send(body, zmq::send_flags::dontwait);
}

std::optional<ReceivedFrame> receive_frame(zmq::socket_t& socket, bool routed,
                                           const comm::wire::FrameLimits& limits,
                                           const comm::JobAuth& auth) {
  std::vector<zmq::message_t> parts;
  zmq::message_t part;
  if (!socket.recv(part, zmq::recv_flags::dontwait)) return std::nullopt;
  parts.push_back(std::move(part));
  while (parts.back().more()) {
    zmq::message_t next;
    // The remaining parts of a multipart message are already here.
    if (!socket.recv(next, zmq::recv_flags::dontwait)) break;
    parts.push_back(std::move(next));
  }
  ReceivedFrame frame;
  const size_t expected = routed ? 3 : 2;
  if (routed && !parts.empty()) frame.identity = parts[0].to_string();
  if (parts.size() != expected) {
    throw DataError(fmt::format("ps frame has {} parts, expected {}", parts.size(), expected));
  }
  const zmq::message_t& head = parts[expected - 2];
  const zmq::message_t& body = parts[expected - 1];
  const std::span<const std::byte> head_bytes(static_cast<const std::byte*>(head.data()),
                                              head.size());
  const std::span<const std::byte> payload(static_cast<const std::byte*>(body.data()), body.size());
  frame.header = comm::wire::decode_header(head_bytes, limits, auth);
  if (frame.header.type != comm::wire::MessageType::kData) {
    throw DataError(fmt::format("ps frame of wire type {}, expected data",
                                comm::wire::to_string(frame.header.type)));
  }
  comm::wire::check_payload(frame.header, head_bytes.first<comm::wire::kHeaderBytes>(), payload,
                            auth);
  frame.message = decode_message(payload);
  return frame;
}

}  // namespace dtrain::ps
