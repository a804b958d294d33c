// ZmqTransport::recv_fold(): over a tcp lane, the awaited frame's body goes
// to the caller's visitor piece by piece as it is read, each piece fed to
// the frame's MAC (or CRC) check on the way and the check finished at the
// end (zmq_transport.h, "Tcp lanes"; docs/collectives.md, "One pass over
// received bytes").
#include <algorithm>

#include "comm/transport/tcp_lane.h"
#include "comm/transport/zmq_transport.h"
#include "comm/transport/zmq_transport_peer.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

// The body is read as it comes (each recv() takes what the socket holds, up
// to the rest of the frame) and handed over in pieces of at most
// kFoldPieceBytes, so that a piece is MACed and reduced while it is still
// in L1. fold_bench measured the receiving CPU per 256 KiB chunk at 0.91-1.01
// of reading, checking and reducing it whole with this (neutral), 0.96-1.07 with reads
// capped at 64 KiB (more recv() calls), load ~20 (docs/collectives.md).
constexpr size_t kFoldPieceBytes = size_t{16} << 10;

}  // namespace

void ZmqTransport::recv_fold(int peer, uint64_t tag, std::span<std::byte> head, size_t body_bytes,
                             const std::string& what, Deadline deadline, const PieceVisitor& fold,
                             const MessageVisitor& mismatch) {
  if (!options_.lane_fold) {
    Transport::recv_fold(peer, tag, head, body_bytes, what, deadline, fold, mismatch);
    return;
  }
  ReceiveTarget target{head, {}, &fold, body_bytes};
  const zmq::message_t message = take(peer, tag, what, deadline, &target);
  if (!target.filled) fold_parts(bytes_of(message), head, body_bytes, fold, mismatch);
}

bool ZmqTransport::read_lane_folded(int peer, const wire::FrameHeader& h,
                                    std::span<const std::byte, wire::kHeaderBytes> header,
                                    const std::function<bool()>& keep_waiting,
                                    ReceiveTarget& target) {
  TcpLane& lane = *lanes_->lane(peer);
  OwnedBuffer body = OwnedBuffer::allocate(target.fold_bytes);
  const std::span<std::byte> rest = body.bytes();
  std::optional<wire::PayloadCheck> check = wire::PayloadCheck::begin(h, header, auth_);
  std::string problem;
  size_t got = 0;
  auto status = lane.read_exact(target.head, keep_waiting, &got, &problem);
  size_t have = 0;  // body bytes read
  size_t used = 0;  // body bytes checked and handed over
  try {
    if (!check && status == TcpLane::ReadStatus::kDone) {
      // A MAC that is checked whole (libsodium's AES-GCM): read, check, hand over.
      status = lane.read_exact(rest, keep_waiting, &have, &problem);
      if (status == TcpLane::ReadStatus::kDone) {
        wire::check_payload(h, header, target.head, rest, auth_);
        if (!rest.empty()) (*target.fold)(0, rest);
      }
    } else if (status == TcpLane::ReadStatus::kDone) {
      check->update(target.head);
      while (used < rest.size()) {
        size_t n = 0;
        if (have < rest.size()) {
          status = lane.read_some(rest.subspan(have), keep_waiting, &n, &problem);
          have += n;
          if (status != TcpLane::ReadStatus::kDone) break;
        }
        // Whole 16-byte blocks (GHASH's), or the end.
        while (used < have) {
          size_t piece = std::min(kFoldPieceBytes, have - used);
          if (have < rest.size()) piece -= piece % 16;
          if (piece == 0) break;
          const std::span<const std::byte> bytes = rest.subspan(used, piece);
          check->update(bytes);
          (*target.fold)(used, bytes);  // unverified until finish()
          used += piece;
        }
      }
      if (status == TcpLane::ReadStatus::kDone) check->finish();
    }
  } catch (const DataError& e) {
    fail_lane(peer,
              fmt::format("sent a frame that failed its checks on its tcp lane: {}", e.what()));
    return false;
  } catch (...) {
    // The receiver gave up mid-frame (its own check threw): the rest of
    // the frame is unread, so the lane cannot be read on.
    fail_lane(peer, "a receiver stopped reading its tcp lane mid-frame");
    throw;
  }
  if (status != TcpLane::ReadStatus::kDone) {
    const auto failed = TcpLane::read_problem(status, problem, got + have, h.payload_bytes);
    if (failed) fail_lane(peer, *failed);
    return false;
  }
  return true;
}

}  // namespace dtrain::comm
