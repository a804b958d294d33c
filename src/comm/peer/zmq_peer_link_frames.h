// The payload layouts of ZmqPeerLink's frames, shared by its caller side
// (zmq_peer_link.cpp) and its I/O thread (zmq_peer_link_io.cpp); private to
// the two. Every payload follows a comm/wire/wire.h header:
//   kPeerData   u32 channel, then the bytes
//   kPeerCall   u32 service, then the request
//   kPeerReply  u8 status (kReplyOk or kReplyFailed), then the reply or the error text
#pragma once
#include <cstddef>
#include <cstdint>

namespace dtrain::comm::peer_frames {

constexpr size_t kChannelBytes = 4;  // peer data: u32 channel
constexpr size_t kServiceBytes = 4;  // peer call: u32 service
constexpr size_t kStatusBytes = 1;   // peer reply: u8 status
constexpr uint8_t kReplyOk = 0;
constexpr uint8_t kReplyFailed = 1;

}  // namespace dtrain::comm::peer_frames
