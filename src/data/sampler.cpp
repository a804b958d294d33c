#include "data/sampler.h"

#include <fmt/format.h>

#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::data {

std::vector<int64_t> sequential_order(int64_t n) {
  if (n < 0) throw UsageError(fmt::format("sampler: dataset size {} is negative", n));
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  return order;
}

std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order = sequential_order(n);
  Rng rng(seed + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

ShardRange shard_range(int64_t n, int64_t world_size, int64_t rank) {
  if (n < 0 || world_size < 1 || rank < 0 || rank >= world_size) {
    throw UsageError(
        fmt::format("sampler: rank {} of world size {} over {} samples is invalid "
                    "(need 0 <= rank < world_size, n >= 0)",
                    rank, world_size, n));
  }
  const int64_t base = n / world_size;
  const int64_t extra = n % world_size;
  const int64_t begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

ShardedSampler::ShardedSampler(SamplerOptions options)
    : options_(options),
      range_(shard_range(options.dataset_size, options.world_size, options.rank)) {}

std::vector<int64_t> ShardedSampler::epoch_indices(int64_t epoch) const {
  const std::vector<int64_t> order =
      options_.shuffle ? shuffled_order(options_.dataset_size, options_.seed, epoch)
                       : sequential_order(options_.dataset_size);
  return {order.begin() + range_.begin, order.begin() + range_.end};
}

int64_t ShardedSampler::max_shard_size() const {
  return shard_range(options_.dataset_size, options_.world_size, 0).size();
}

}  // namespace dtrain::data
