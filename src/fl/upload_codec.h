// UploadCodec: a federated client's update (its flat delta w_k - w, in
// state_dict() order: fl/flat_model.h) as the compact message it uploads,
// and that message back as the delta the server aggregates. The simulation
// uses it to count bytes_up (the message's size) and to aggregate exactly
// what a deployment would receive; the deployed client and server use it as
// the kUpdate payload's delta.
//
// Per tensor (one per state_dict() entry, seen as compress's rows x cols
// matrix: layouts_of()) the delta goes compressed by the job's
// [compression] codec when that method compresses the tensor
// (compress::Compressor::compresses(): at least Options::min_size floats,
// and for PowerSGD a matrix worth factoring), dense f32 otherwise; method
// none sends every tensor dense. The message, little-endian
// (docs/federated.md, "Compressed uploads", byte by byte):
//
//   u8 version (1) | u8 method tag (compress::Method) | u32 tensors T |
//   T x (u8 form, u32 body bytes) | T bodies, in tensor order
//
// form 0: the body is the tensor's numel f32 values; form 1: the body is one
// compress message of the header's method (compress/compressor.h, encode();
// it carries its own tag and shape). decode() accepts either form for any
// tensor (the sender's choice), and checks everything else: the version,
// the method (the codec's own), T, every form, every body length against
// the bytes there (a truncated or oversized message), each compress message
// (compress::decode_add), and that every decoded value is finite.
//
// Stateless: no error feedback and no DGC momentum. A client is idle between
// the rounds it is sampled in (in the simulation an idle client is its data
// indices and its RNG, nothing model-sized; a deployed client may restart),
// and a residual kept across rounds would carry the unsent part of an update
// computed against a global model many rounds old. Options::error_feedback
// is ignored (the compressors run without it); Options::momentum > 0 is
// refused. So top-k, sign and PowerSGD drop what they do not send, and
// random-k sends g n / k at its positions (unbiased), as QSGD is.
//
// Randomness (random-k's positions, QSGD's rounding, PowerSGD's first Q)
// comes from the compressor seeded with a mix of (Options::seed, round,
// client), with step = round (so DGC's warmup_steps count rounds): the same
// (delta, round, client) always gives the same bytes, whatever thread or
// order encodes it, and two clients of a round draw apart (random-k's
// positions differ per client, so the round's mean covers more of them).
//
// Ownership: a value; holds the options and the layouts. Thread safety:
// encode() and decode() are const and safe to call concurrently (encode()
// builds its own compressor per call). Errors: the constructor throws
// UsageError for bad options (compress::validate), momentum > 0 or a tensor
// of more than kMaxTensorFloats floats; encode() UsageError for a delta of
// the wrong size or a negative round or client, DataError (naming the
// client, the round, the tensor and the index) for a non-finite value in the
// delta, which is never encoded; decode() DataError naming its `context`,
// the field and the offset for a malformed message, UsageError for a
// model_size that is not the codec's. Never blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "compress/compressor.h"
#include "nn/module.h"

namespace dtrain::fl {

// The compress layout of every state_dict() entry of `model`, in order: a
// tensor of shape [d0, d1, ...] (two or more dimensions, d0 > 0) is
// d0 x (d1 * ...), anything else (a vector, a scalar, an empty first
// dimension) 1 x numel.
std::vector<compress::TensorLayout> layouts_of(const nn::Module& model);

class UploadCodec {
 public:
  // The format version this codec writes and reads.
  static constexpr uint8_t kVersion = 1;
  // Body forms of the tensor table.
  static constexpr uint8_t kDense = 0;
  static constexpr uint8_t kCompressed = 1;
  // The largest tensor (floats) a codec takes: every body of it, dense or
  // compressed (at most 8 bytes per float plus a header), fits the table's
  // u32 length.
  static constexpr size_t kMaxTensorFloats = (size_t{0xffffffff} - 64) / 8;

  UploadCodec(const compress::Options& options, std::vector<compress::TensorLayout> layouts);

  // Bytes before the bodies of a message of `tensors` tensors: 6 + 5 T.
  static size_t header_bytes(size_t tensors) { return 6 + 5 * tensors; }

  const compress::Options& options() const { return options_; }
  const std::vector<compress::TensorLayout>& layouts() const { return layouts_; }
  // The sum of the layouts' floats: the delta's size.
  int64_t model_size() const { return model_size_; }
  // Whether encode() sends tensor `tensor` compressed (form 1).
  bool compresses(size_t tensor) const;

  // The message of `delta` (model_size() floats), client `client`'s update
  // in round `round`. Its size is what bytes_up counts.
  std::vector<std::byte> encode(std::span<const float> delta, int64_t round, int64_t client) const;

  // The delta (model_size floats) a message decodes to; every value finite.
  // `context` starts every error ("update of client 3, round 7").
  std::vector<float> decode(std::span<const std::byte> message, int64_t model_size,
                            std::string_view context = "upload") const;

 private:
  compress::Options options_;
  std::vector<compress::TensorLayout> layouts_;
  std::vector<size_t> offsets_;  // tensor t's first float in the delta; size T + 1
  std::vector<bool> compresses_;
  int64_t model_size_ = 0;
};

}  // namespace dtrain::fl
