// Compressed dense pushes (Kind::kPushCompressed, docs/parameter-server.md
// "Compressed pushes"): how a worker cuts its gradient into pieces and
// compresses each, and how a server turns the pieces back into the dense
// gradient of its range.
//
// The pieces a worker pushes are those of slice_pieces() (sharding.h) for
// every slice of the shard plan, server by server: for server s, every
// ShardSlice of plan.slices(s) in order, and within a slice its pieces in
// element order (a leading partial row, whole rows, a trailing partial
// row). One compress::Compressor serves all of them (tensor index = the
// piece's position in that server-major list, layout = the piece's), so
// error feedback and PowerSGD's Q are kept per piece, on the worker. A
// piece the compressor does not compress (compresses() false: too small,
// or a matrix PowerSGD would not shrink) travels as plain floats.
//
// The server decodes every piece of a push into a zeroed scratch range
// before anything is applied (compress::decode_add is stateless and leaves
// its output unchanged on a malformed message), so a push with one bad
// piece changes nothing.
//
// Ownership: PushCompressor owns its compressor; the ShardPlan passed to
// it is copied. Thread safety: PushCompressor is used by one thread at a
// time (the client's); decode_push() is a pure function. Errors:
// PushCompressor: UsageError (options, gradient shapes); decode_push():
// DataError naming the worker, the piece and its tensor ("push from worker
// 0: ..."). Never blocks.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "compress/compressor.h"
#include "ps/messages.h"
#include "ps/sharding.h"
#include "tensor/tensor.h"

namespace dtrain::ps {

// One piece of a server's push: slice `slice` of plan.slices(server) and
// its piece `piece` (slice_pieces()).
struct PushPieceSpec {
  size_t slice = 0;
  SlicePiece piece;
};

// Server `server`'s pieces, in push order.
std::vector<PushPieceSpec> push_pieces(const ShardPlan& plan, int server);

// Every piece's layout, server-major: the compressor's tensor list.
std::vector<compress::TensorLayout> push_layouts(const ShardPlan& plan);

class PushCompressor {
 public:
  // A compressor of `options` (method not kNone) over push_layouts(plan).
  PushCompressor(const compress::Options& options, const ShardPlan& plan);

  // Server `server`'s pieces of `grads` (the plan's tensors, in order, shapes
  // checked by the caller), at compression step `step`, for worker `rank`.
  // Updates the compressor's residuals of those pieces.
  std::vector<PushPiece> encode(int server, const std::vector<Tensor>& grads, int64_t step,
                                int rank);

  compress::Compressor& compressor() { return *compressor_; }
  const compress::Compressor& compressor() const { return *compressor_; }

 private:
  ShardPlan plan_;
  std::vector<std::vector<PushPieceSpec>> pieces_;  // by server: push_pieces()
  std::vector<size_t> first_tensor_;  // by server: compressor index of its first piece
  std::unique_ptr<compress::Compressor> compressor_;
};

// The dense gradient of server `server`'s range (plan.range_numel(server)
// floats) that `pieces` of worker `worker` decode to. Every piece is checked
// against push_pieces(plan, server): the piece count, a dense piece's float
// count, a compressed piece's message (compress::decode_add); DataError
// naming the worker and the piece (its tensor and element range) otherwise.
std::vector<float> decode_push(const ShardPlan& plan, int server, std::span<const PushPiece> pieces,
                               uint32_t worker);

}  // namespace dtrain::ps
