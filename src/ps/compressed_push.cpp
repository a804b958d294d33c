#include "ps/compressed_push.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::ps {

std::vector<PushPieceSpec> push_pieces(const ShardPlan& plan, int server) {
  const std::vector<ShardSlice>& slices = plan.slices(server);
  std::vector<PushPieceSpec> pieces;
  for (size_t i = 0; i < slices.size(); ++i) {
    for (const SlicePiece& piece : slice_pieces(plan, slices[i])) pieces.push_back({i, piece});
  }
  return pieces;
}

std::vector<compress::TensorLayout> push_layouts(const ShardPlan& plan) {
  std::vector<compress::TensorLayout> layouts;
  for (int s = 0; s < plan.num_servers(); ++s) {
    for (const PushPieceSpec& spec : push_pieces(plan, s)) layouts.push_back(spec.piece.layout);
  }
  return layouts;
}

PushCompressor::PushCompressor(const compress::Options& options, const ShardPlan& plan)
    : plan_(plan) {
  size_t first = 0;
  for (int s = 0; s < plan_.num_servers(); ++s) {
    pieces_.push_back(push_pieces(plan_, s));
    first_tensor_.push_back(first);
    first += pieces_.back().size();
  }
  compressor_ = compress::make_compressor(options, push_layouts(plan_));
}

std::vector<PushPiece> PushCompressor::encode(int server, const std::vector<Tensor>& grads,
                                              int64_t step, int rank) {
  const std::vector<ShardSlice>& slices = plan_.slices(server);
  const std::vector<PushPieceSpec>& specs = pieces_[static_cast<size_t>(server)];
  std::vector<PushPiece> pieces(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const ShardSlice& slice = slices[specs[i].slice];
    const SlicePiece& spec = specs[i].piece;
    const size_t tensor = first_tensor_[static_cast<size_t>(server)] + i;
    const std::span<const float> grad(
        grads[slice.tensor].data() + slice.offset + spec.offset_in_slice,
        static_cast<size_t>(spec.count));
    PushPiece& piece = pieces[i];
    if (compressor_->compresses(tensor)) {
      ByteWriter out;
      compressor_->encode(tensor, grad, step, rank, out);
      piece.compressed = true;
      piece.message = out.take();
    } else {
      piece.dense.assign(grad.begin(), grad.end());
    }
  }
  return pieces;
}

std::vector<float> decode_push(const ShardPlan& plan, int server, std::span<const PushPiece> pieces,
                               uint32_t worker) {
  const std::vector<ShardSlice>& slices = plan.slices(server);
  const std::vector<PushPieceSpec> specs = push_pieces(plan, server);
  const std::string context = fmt::format("push from worker {}", worker);
  if (pieces.size() != specs.size()) {
    throw DataError(
        fmt::format("{}: {} pieces; server {} holds {} pieces ({} slices); nothing applied",
                    context, pieces.size(), server, specs.size(), slices.size()));
  }
  std::vector<float> grad(static_cast<size_t>(plan.range_numel(server)), 0.0f);
  for (size_t i = 0; i < specs.size(); ++i) {
    const ShardSlice& slice = slices[specs[i].slice];
    const SlicePiece& spec = specs[i].piece;
    const PushPiece& piece = pieces[i];
    const auto count = static_cast<size_t>(spec.count);
    const std::span<float> out = std::span<float>(grad).subspan(
        static_cast<size_t>(slice.shard_offset + spec.offset_in_slice), count);
    auto where = [&] {
      const int64_t begin = slice.offset + spec.offset_in_slice;
      return fmt::format("piece {} (tensor '{}' elements [{}, {}))", i,
                         plan.tensors()[slice.tensor].name, begin, begin + spec.count);
    };
    if (!piece.compressed) {
      if (piece.dense.size() != count) {
        throw DataError(fmt::format("{}: {} carries {} floats; expected {}; nothing applied",
                                    context, where(), piece.dense.size(), count));
      }
      std::copy(piece.dense.begin(), piece.dense.end(), out.begin());
      continue;
    }
    try {
      compress::decode_add(piece.message, spec.layout, 1.0f, out, context);
    } catch (const DataError& e) {
      throw DataError(fmt::format("{} in {}; nothing applied", e.what(), where()));
    }
  }
  return grad;
}

}  // namespace dtrain::ps
