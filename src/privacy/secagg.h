// Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for
// Privacy-Preserving Machine Learning", CCS; the SecAgg+ graph of Bell et al.
// 2020): the server learns the sum of the clients' vectors and nothing else,
// even when up to n - t clients drop out mid-round. Transport-free: the
// objects turn byte messages into byte messages; whoever owns the transport
// (the federated simulation, the deployed server and client, or
// run_secagg_round in secagg_round.h) carries them.
//
// One round, for client u with neighbours N(u) (secagg_graph.h) and holders
// H(u) = N(u) + {u}, share ids = client id + 1:
//   0 AdvertiseKeys  u -> server: c_pk_u, s_pk_u (two fresh X25519 keys).
//                    server -> u: the keys of the neighbours that advertised
//                    (U1), when |U1| >= min_survivors.
//   1 ShareKeys      u -> server: for each v in N(u) & U1, AEAD_{c_uv}(share_v(s_sk_u),
//                    share_v(b_u)) with b_u a fresh 32-byte self-mask seed and
//                    t-of-|H(u)| Shamir shares. server -> u: the ciphertexts
//                    addressed to u by the senders U2.
//   2 MaskedInput    u -> server: y_u = q(x_u) + PRG(b_u) + sum_{v in N(u)&U2, u<v}
//                    PRG(s_uv) - sum_{v in N(u)&U2, u>v} PRG(s_uv) mod 2^32, where
//                    s_uv = KA(s_sk_u, s_pk_v) and q is secagg_quantize.h.
//                    server -> u: survivors U3 and dropped U2 \ U3 among H(u).
//   3 Unmasking      u -> server: shares of b_v for v in U3, of s_sk_v for
//                    dropped v. The server reconstructs (t shares each),
//                    removes PRG(b_v) for v in U3 and the pairwise masks
//                    survivors shared with dropped clients, and dequantises.
// A client never reveals both shares for the same v (that would unmask x_v):
// a request naming v in both lists, or not partitioning exactly the holders
// it knows, is refused with DataError.
//
// Threat model: honest-but-curious server and clients (Bonawitz's semi-honest
// setting), no PKI: the public keys are not signed. The job's secret
// authenticates each client's link to the server (the transport's job), so
// an outsider cannot pose as a client; the server itself is trusted to route
// honestly. A malicious server could, e.g., substitute keys or send different
// survivor lists to different clients: the signatures and the consistency
// round of Bonawitz's actively secure variant are not implemented. Against a
// semi-honest server, its view short of t shares of a secret is independent
// of that secret, and no client reveals both secrets of anyone.
//
// Thresholds: `threshold` t is the Shamir threshold of every client's secrets
// among its holders (full graph: t of n; SecAgg+: t of k + 1). Choose t
// above half the holders, as Bonawitz et al. do: a smaller t works
// mechanically but weakens the guarantee (with t = 1, a client whose
// neighbours all drop after phase 1 is unmasked by its own b share).
// `min_survivors` (0: t) is how many clients the server needs at every phase;
// below it a phase fails with CommError naming the phase, how many answered
// and the minimum, and the server has seen fewer than t shares of anything.
//
// Messages (all integers little-endian): a 10-byte header, u8 version (1),
// u8 type (0..6, below), u32 round, u32 sender (0xffffffff for the server);
// then the body. docs/privacy-secagg-section.md lists the bodies byte by byte.
// Malformed messages (truncated, wrong round, wrong sender, unknown ids,
// duplicates, failed authentication) throw DataError naming the sender and
// the phase.
//
// Ownership and thread safety: each object owns its state; one thread per
// object; different objects are independent. Calls out of phase order throw
// UsageError. Nothing blocks.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "privacy/secagg_crypto.h"
#include "privacy/secagg_graph.h"
#include "privacy/secagg_quantize.h"
#include "privacy/shamir.h"

namespace dtrain::privacy {

using SecAggMessage = std::vector<std::byte>;

inline constexpr uint32_t kSecAggServerId = 0xffffffffU;
inline constexpr uint8_t kSecAggVersion = 1;

enum class SecAggMessageType : uint8_t {
  kAdvertiseKeys = 0,
  kKeyDirectory = 1,
  kShareKeys = 2,
  kShareBundle = 3,
  kMaskedInput = 4,
  kUnmaskRequest = 5,
  kUnmasking = 6,
};

struct SecAggConfig {
  uint32_t round = 0;
  uint32_t clients = 0;    // n; ids 0..n-1
  uint32_t threshold = 0;  // Shamir t among each client's holders
  SecAggGraphKind graph = SecAggGraphKind::kFull;
  uint32_t degree = 0;      // SecAgg+ k (even); 0: recommended_degree(clients)
  uint64_t graph_seed = 0;  // public, drawn after the clients are chosen
  float clip = 1.0F;        // each value is clipped to [-clip, clip]
  uint64_t vector_length = 0;
  uint32_t min_survivors = 0;  // 0: threshold
};

// UsageError for n == 0, t == 0 or t larger than the smallest holder set, a
// bad degree, a clip that is not positive, min_survivors > n.
void validate(const SecAggConfig& config);
// The holders' count of each client's secrets: n (full) or k + 1 (SecAgg+).
uint32_t holders_per_client(const SecAggConfig& config);

class SecAggClient {
 public:
  // `entropy` seeds every secret of this client in this round (keys, b_u,
  // Shamir coefficients, rounding): fresh random bytes in deployment
  // (random_key()), fixed ones for reproducible tests.
  SecAggClient(SecAggConfig config, uint32_t id, const Key32& entropy);
  SecAggClient(const SecAggClient&) = delete;
  SecAggClient& operator=(const SecAggClient&) = delete;
  SecAggClient(SecAggClient&&) = default;
  SecAggClient& operator=(SecAggClient&&) = default;
  ~SecAggClient();

  uint32_t id() const { return id_; }

  SecAggMessage advertise_keys();                                      // phase 0
  SecAggMessage share_keys(std::span<const std::byte> key_directory);  // phase 1
  SecAggMessage masked_input(std::span<const std::byte> share_bundle,  // phase 2
                             std::span<const float> input);
  SecAggMessage unmask(std::span<const std::byte> unmask_request);  // phase 3

 private:
  struct Peer {
    Key32 c_public{};
    Key32 s_public{};
    Key32 encryption_key{};
    std::optional<ShamirShare> s_share;  // of the peer's s_sk, held by us
    std::optional<ShamirShare> b_share;  // of the peer's b
  };
  void expect_phase(int phase, const char* call) const;
  std::string context(int phase) const;

  SecAggConfig config_;
  uint32_t id_;
  Key32 entropy_;
  X25519KeyPair c_keys_;
  X25519KeyPair s_keys_;
  Key32 self_mask_seed_{};
  std::vector<uint32_t> neighbours_;
  std::map<uint32_t, Peer> peers_;  // neighbours in the key directory
  ShamirShare own_s_share_;
  ShamirShare own_b_share_;
  std::vector<uint32_t> bundle_senders_;  // U2 & N(u)
  int next_phase_ = 0;
};

struct SecAggResult {
  std::vector<float> sum;          // dequantised sum of the included inputs
  std::vector<uint32_t> included;  // U3: the clients whose inputs are in the sum
};

class SecAggServer {
 public:
  explicit SecAggServer(SecAggConfig config);

  // Each receive_* validates and stores one client's message of the phase;
  // each finish_* closes the phase (CommError below min_survivors) and
  // returns the message for each client still in the round.
  void receive_advertise(uint32_t sender, std::span<const std::byte> message);
  std::map<uint32_t, SecAggMessage> finish_advertise();
  void receive_share_keys(uint32_t sender, std::span<const std::byte> message);
  std::map<uint32_t, SecAggMessage> finish_share_keys();
  void receive_masked_input(uint32_t sender, std::span<const std::byte> message);
  std::map<uint32_t, SecAggMessage> finish_masked_input();
  void receive_unmasking(uint32_t sender, std::span<const std::byte> message);
  SecAggResult finish();

 private:
  struct ClientState {
    Key32 c_public{};
    Key32 s_public{};
    bool shared = false;                                      // in U2
    std::map<uint32_t, std::vector<uint8_t>> ciphertexts_to;  // recipient -> AEAD
    std::vector<uint32_t> request_survivors;                  // what we asked it in phase 3
    std::vector<uint32_t> request_dropped;
    bool unmasked = false;  // in U4
  };
  void expect_phase(int phase, const char* call) const;
  void check_survivors(int phase, size_t answered) const;
  std::string context(int phase, uint32_t sender) const;

  SecAggConfig config_;
  uint32_t min_survivors_;
  std::vector<std::vector<uint32_t>> neighbours_;
  std::map<uint32_t, ClientState> clients_;                // U1
  std::map<uint32_t, bool> masked_;                        // U3 (value unused)
  std::vector<uint32_t> sum_;                              // sum of y_u mod 2^32
  std::map<uint32_t, std::vector<ShamirShare>> b_shares_;  // owner -> shares
  std::map<uint32_t, std::vector<ShamirShare>> s_shares_;
  int phase_ = 0;
};

const char* secagg_phase_name(int phase);

}  // namespace dtrain::privacy
