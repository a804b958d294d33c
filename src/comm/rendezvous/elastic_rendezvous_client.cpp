#include <fmt/format.h>

#include <zmq.hpp>

#include "comm/rendezvous/elastic_protocol.h"
#include "comm/rendezvous/elastic_rendezvous.h"
#include "comm/rendezvous/launch_env.h"
#include "comm/wire/framed_socket.h"
#include "comm/wire/wire.h"
#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::comm {

namespace {

using namespace std::chrono_literals;
using namespace elastic_protocol;
using Clock = std::chrono::steady_clock;

// How often a waiting client checks its deadline.
constexpr auto kClientSlice = 100ms;

}  // namespace

struct ElasticRendezvousClient::Socket {
  zmq::context_t context{1};
  std::unique_ptr<wire::FramedSocket> dealer;
};

ElasticRendezvousClient::ElasticRendezvousClient(const std::string& coordinator, int slot,
                                                 int slots, JobAuth auth, Logger& logger)
    : coordinator_(coordinator),
      slot_(slot),
      slots_(slots),
      auth_(std::move(auth)),
      logger_(logger),
      socket_(std::make_unique<Socket>()) {
  if (slots < 1 || slot < 0 || slot >= slots) {
    throw UsageError(fmt::format("elastic rendezvous: slot {} is outside 0..{}", slot, slots - 1));
  }
  const HostPort hp = parse_host_port(coordinator, "elastic coordinator");
  wire::FramedSocketOptions o;
  o.name = fmt::format("elastic rendezvous slot {}", slot);
  o.rank = static_cast<uint32_t>(slot);
  o.limits = wire::FrameLimits{auth_.job_id(), static_cast<uint32_t>(slots),
                               static_cast<uint32_t>(slot), kMaxPayload};
  o.accepted = {wire::MessageType::kTable, wire::MessageType::kReject, wire::MessageType::kStatus};
  o.on_reject = [this](const wire::RejectedFrame& f) {
    // A refusal from a coordinator of another job or with another secret
    // cannot be verified; its reason is still the most useful thing to show.
    if (f.raw_type() == static_cast<uint8_t>(wire::MessageType::kReject)) {
      throw CommError(-1, "elastic rendezvous",
                      fmt::format("the coordinator at {} refused slot {}: \"{}\" (its reply "
                                  "failed verification too: {})",
                                  coordinator_, slot_, text_of(f.payload), f.reason));
    }
  };
  const std::string host = hp.host.find(':') != std::string::npos ? "[" + hp.host + "]" : hp.host;
  socket_->dealer = std::make_unique<wire::FramedSocket>(
      socket_->context, wire::FramedSocket::Role::kDealer,
      fmt::format("tcp://{}:{}", host, hp.port), std::move(o), auth_, logger_);
}

ElasticRendezvousClient::~ElasticRendezvousClient() = default;

void ElasticRendezvousClient::send(uint32_t kind, const std::vector<std::byte>& body) {
  wire::FrameHeader h;
  h.type = wire::MessageType::kRegister;
  h.receiver = wire::kCoordinator;
  socket_->dealer->send({}, h, with_kind(kind, body));
}

std::optional<std::pair<uint32_t, std::vector<std::byte>>> ElasticRendezvousClient::read_reply(
    std::chrono::milliseconds timeout) {
  std::optional<wire::Frame> frame = socket_->dealer->receive(Deadline::after(timeout));
  if (!frame) return std::nullopt;
  ByteReader r(frame->payload(), fmt::format("elastic coordinator reply to slot {}", slot_));
  const uint32_t kind = r.read_u32("reply kind");
  if (frame->header.type == wire::MessageType::kReject) {
    if (kind == kPoll) return std::nullopt;  // a refused poll only means "nothing to report"
    throw CommError(-1, "elastic rendezvous",
                    fmt::format("the coordinator at {} refused slot {}: {}", coordinator_, slot_,
                                text_of(r.rest())));
  }
  return std::make_pair(kind, std::vector<std::byte>(r.rest().begin(), r.rest().end()));
}

std::vector<std::byte> ElasticRendezvousClient::await(uint32_t kind, const std::string& what,
                                                      Deadline deadline) {
  const auto start = Clock::now();
  while (!deadline.expired()) {
    auto reply =
        read_reply(std::min<std::chrono::milliseconds>(deadline.remaining(), kClientSlice));
    if (!reply) continue;
    if (reply->first == kPoll) {
      poll_outstanding_ = false;
      continue;
    }
    if (kind == kJoin && reply->first == kLeftOut) {
      throw LeftOutError(-1, "elastic rendezvous", text_of(reply->second));
    }
    if (reply->first == kind || (kind == kJoin && reply->first == kFinished)) {
      if (reply->first == kFinished) return {};
      return std::move(reply->second);
    }
    logger_.warn("elastic rendezvous slot {}: ignored a reply of kind {} while awaiting {}", slot_,
                 reply->first, what);
  }
  const std::string handshake = socket_->dealer->handshake_failures();
  throw TimeoutError(-1, "elastic rendezvous",
                     std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start),
                     fmt::format("{} from the coordinator at {} (slot {}){}", what, coordinator_,
                                 slot_, handshake.empty() ? "" : ": " + handshake));
}

std::optional<ElasticGeneration> ElasticRendezvousClient::join(std::optional<uint32_t> member_of,
                                                               Deadline deadline,
                                                               const std::vector<int>& suspects) {
  ByteWriter body;
  body.write_u32(member_of.value_or(kNone));
  body.write_u32(static_cast<uint32_t>(suspects.size()));
  for (int suspect : suspects) body.write_u32(static_cast<uint32_t>(suspect));
  send(kJoin, body.take());
  const std::vector<std::byte> reply =
      await(kJoin,
            fmt::format("the group to re-form (generation {})",
                        member_of ? fmt::format("{}", *member_of + 1) : std::string("next")),
            deadline);
  if (reply.empty()) return std::nullopt;  // finished
  ByteReader r(reply, fmt::format("elastic membership for slot {}", slot_));
  ElasticGeneration m;
  m.generation = r.read_u32("generation");
  const uint32_t count = r.read_u32("member count");
  if (count < 1 || count > static_cast<uint32_t>(slots_)) {
    throw DataError(fmt::format(
        "elastic rendezvous: membership of {} workers, the job has {} slots", count, slots_));
  }
  m.rank = -1;
  for (uint32_t i = 0; i < count; ++i) {
    const auto slot = static_cast<int>(r.read_u32("slot"));
    if (slot == slot_) m.rank = static_cast<int>(i);
    m.slots.push_back(slot);
  }
  r.expect_end("membership");
  waiting_ = 0;  // what polls reported concerned the round that just closed
  if (m.rank < 0) {
    throw DataError(fmt::format("elastic rendezvous: generation {} does not include slot {}",
                                m.generation, slot_));
  }
  return m;
}

std::vector<PeerEndpoint> ElasticRendezvousClient::exchange_endpoints(uint32_t generation,
                                                                      const PeerEndpoint& self,
                                                                      Deadline deadline) {
  ByteWriter body;
  body.write_u32(generation);
  body.write_bytes(encode_endpoints(std::span<const PeerEndpoint>(&self, 1)));
  send(kEndpoint, body.take());
  const std::vector<std::byte> reply =
      await(kEndpoint, fmt::format("the endpoints of generation {}", generation), deadline);
  ByteReader r(reply, fmt::format("elastic endpoint table for slot {}", slot_));
  const uint32_t got = r.read_u32("generation");
  if (got != generation) {
    throw DataError(fmt::format("elastic rendezvous: endpoints of generation {}, expected {}", got,
                                generation));
  }
  std::vector<PeerEndpoint> table = decode_endpoints(r.rest(), static_cast<size_t>(slots_));
  for (size_t rank = 0; rank < table.size(); ++rank) {
    if (table[rank].rank != static_cast<int>(rank)) {
      throw DataError(
          fmt::format("elastic rendezvous: table entry {} is for rank {}", rank, table[rank].rank));
    }
  }
  return table;
}

uint32_t ElasticRendezvousClient::poll() {
  while (true) {
    std::optional<std::pair<uint32_t, std::vector<std::byte>>> reply;
    try {
      reply = read_reply(std::chrono::milliseconds(0));
    } catch (const Error& e) {
      logger_.warn("elastic rendezvous slot {}: poll: {}", slot_, e.what());
      poll_outstanding_ = false;
      break;
    }
    if (!reply) break;
    if (reply->first != kPoll) continue;
    poll_outstanding_ = false;
    ByteReader r(reply->second, fmt::format("elastic poll reply to slot {}", slot_));
    r.read_u32("generation");
    waiting_ = r.read_u32("waiting");
  }
  if (!poll_outstanding_) {
    send(kPoll, {});
    poll_outstanding_ = true;
  }
  return waiting_;
}

}  // namespace dtrain::comm
