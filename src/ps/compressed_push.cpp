#include "ps/compressed_push.h"

#include <fmt/format.h>

#include <string>

#include "core/byte_codec.h"
#include "core/error.h"

namespace dtrain::ps {

std::vector<compress::TensorLayout> push_layouts(const ShardPlan& plan) {
  std::vector<compress::TensorLayout> layouts;
  for (int s = 0; s < plan.num_servers(); ++s) {
    for (const ShardSlice& slice : plan.slices(s)) layouts.push_back(slice_layout(plan, slice));
  }
  return layouts;
}

PushCompressor::PushCompressor(const compress::Options& options, const ShardPlan& plan)
    : plan_(plan) {
  size_t first = 0;
  for (int s = 0; s < plan_.num_servers(); ++s) {
    first_tensor_.push_back(first);
    first += plan_.slices(s).size();
  }
  compressor_ = compress::make_compressor(options, push_layouts(plan_));
}

std::vector<PushPiece> PushCompressor::encode(int server, const std::vector<Tensor>& grads,
                                              int64_t step, int rank) {
  const std::vector<ShardSlice>& slices = plan_.slices(server);
  std::vector<PushPiece> pieces(slices.size());
  for (size_t i = 0; i < slices.size(); ++i) {
    const ShardSlice& slice = slices[i];
    const size_t tensor = first_tensor_[static_cast<size_t>(server)] + i;
    const std::span<const float> grad(grads[slice.tensor].data() + slice.offset,
                                      static_cast<size_t>(slice.count));
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
  const std::string context = fmt::format("push from worker {}", worker);
  if (pieces.size() != slices.size()) {
    throw DataError(fmt::format("{}: {} pieces; server {} holds {} slices; nothing applied",
                                context, pieces.size(), server, slices.size()));
  }
  std::vector<float> grad(static_cast<size_t>(plan.range_numel(server)), 0.0f);
  for (size_t i = 0; i < slices.size(); ++i) {
    const ShardSlice& slice = slices[i];
    const PushPiece& piece = pieces[i];
    const auto count = static_cast<size_t>(slice.count);
    const std::span<float> out =
        std::span<float>(grad).subspan(static_cast<size_t>(slice.shard_offset), count);
    auto where = [&] {
      return fmt::format("piece {} (tensor '{}' elements [{}, {}))", i,
                         plan.tensors()[slice.tensor].name, slice.offset,
                         slice.offset + slice.count);
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
      compress::decode_add(piece.message, slice_layout(plan, slice), 1.0f, out, context);
    } catch (const DataError& e) {
      throw DataError(fmt::format("{} in {}; nothing applied", e.what(), where()));
    }
  }
  return grad;
}

}  // namespace dtrain::ps
