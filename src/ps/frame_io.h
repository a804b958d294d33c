// Sending and receiving ps messages as ZeroMQ multipart frames: an optional
// routing identity (ROUTER side), the 88-byte comm/wire/wire.h header, the ps
// payload (messages.h). Shared by Client and Server.
//
// receive_frame() validates everything (part count, header, job id, receiver,
// length, CRC-32C, MAC, then the payload) and throws DataError naming the
// field; the caller drops and logs such frames.
// Thread safety: the socket's owner thread only. send_frame never blocks
// (ZeroMQ queues; a full queue drops, as a dead peer would).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "comm/wire/auth.h"
#include "comm/wire/wire.h"
#include "ps/messages.h"

namespace dtrain::ps {

struct ReceivedFrame {
  std::string identity;  // ROUTER side: the peer's routing id
  comm::wire::FrameHeader header;
  Message message;
};

// Sends `message` from wire rank `sender` to `receiver`; `identity` routes it
// on a ROUTER socket (empty on a DEALER).
void send_frame(zmq::socket_t& socket, const std::string& identity, uint32_t sender,
                uint32_t receiver, const Message& message, const comm::JobAuth& auth);

// Reads one multipart frame if one is waiting (nullopt otherwise). Throws
// DataError for a frame that fails validation (already consumed).
std::optional<ReceivedFrame> receive_frame(zmq::socket_t& socket, bool routed,
                                           const comm::wire::FrameLimits& limits,
                                           const comm::JobAuth& auth);

}  // namespace dtrain::ps
