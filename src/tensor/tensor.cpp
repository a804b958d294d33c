#include "tensor/tensor.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace dtrain {

std::string shape_str(const Shape& shape) {
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  return fmt::format("({})", fmt::join(shape, ", "));
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t extent : shape) n *= extent;
  return n;
}

namespace {

constexpr size_t kAlign = 64;

// A per-thread cache of recently freed large blocks, keyed by exact size.
// A training step frees and re-allocates the same activation sizes every
// iteration; without the cache glibc returns those pages to the kernel
// (heap trimming, munmap) and every step pays for page faults again
// (measured: 16% of a LeNet-5 step). Bounded in count and bytes; blocks go
// back to the system when the thread exits. Disabled under AddressSanitizer
// so that use-after-free stays detectable.
//
// Storage freed while the thread's cache does not exist (never created on
// this thread, or already destroyed at thread exit, e.g. by a static
// Tensor) bypasses it: t_cache_alive says whether it may be touched.
thread_local bool t_cache_alive = false;

class BlockCache {
 public:
  static constexpr size_t kMinBytes = 64 * 1024;
  static constexpr size_t kMaxBytes = 128 * 1024 * 1024;
  static constexpr size_t kMaxBlocks = 64;

  BlockCache() { t_cache_alive = true; }
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;
  ~BlockCache() {
    t_cache_alive = false;
    for (const Block& b : blocks_) ::operator delete(b.data, std::align_val_t(kAlign));
  }

  void* take(size_t bytes) {
    for (size_t i = blocks_.size(); i-- > 0;) {
      if (blocks_[i].bytes == bytes) {
        void* data = blocks_[i].data;
        cached_bytes_ -= bytes;
        blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(i));
        return data;
      }
    }
    return nullptr;
  }

  // Keeps `data` for reuse, or frees it (and the oldest blocks) past the bounds.
  void give(void* data, size_t bytes) {
    if (bytes > kMaxBytes) {
      ::operator delete(data, std::align_val_t(kAlign));
      return;
    }
    while (!blocks_.empty() &&
           (blocks_.size() >= kMaxBlocks || cached_bytes_ + bytes > kMaxBytes)) {
      ::operator delete(blocks_.front().data, std::align_val_t(kAlign));
      cached_bytes_ -= blocks_.front().bytes;
      blocks_.erase(blocks_.begin());
    }
    blocks_.push_back({data, bytes});
    cached_bytes_ += bytes;
  }

 private:
  struct Block {
    void* data;
    size_t bytes;
  };
  std::vector<Block> blocks_;
  size_t cached_bytes_ = 0;
};

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUseBlockCache = false;
#else
constexpr bool kUseBlockCache = true;
#endif

BlockCache& block_cache() {
  thread_local BlockCache cache;
  return cache;
}

size_t storage_bytes(int64_t count) {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(float);
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

}  // namespace

Storage::Storage(int64_t count) : size_(count) {
  const size_t bytes = storage_bytes(count);
  void* data = nullptr;
  if (kUseBlockCache && bytes >= BlockCache::kMinBytes) data = block_cache().take(bytes);
  if (data == nullptr) data = ::operator new(bytes, std::align_val_t(kAlign));
  data_ = static_cast<float*>(data);
}

Storage::~Storage() {
  const size_t bytes = storage_bytes(size_);
  if (kUseBlockCache && bytes >= BlockCache::kMinBytes && t_cache_alive) {
    block_cache().give(data_, bytes);
  } else {
    ::operator delete(data_, std::align_val_t(kAlign));
  }
}

Tensor::Tensor(std::shared_ptr<Storage> storage, int64_t offset, Shape shape)
    : storage_(std::move(storage)), offset_(offset), shape_(std::move(shape)) {
  numel_ = shape_numel(shape_);
}

Tensor Tensor::empty(Shape shape) {
  for (int64_t extent : shape) {
    if (extent < 0) throw UsageError(fmt::format("negative extent in shape {}", shape_str(shape)));
  }
  const int64_t n = shape_numel(shape);
  return Tensor(std::make_shared<Storage>(n), 0, std::move(shape));
}

Tensor Tensor::zeros(Shape shape) { return full(std::move(shape), 0.0f); }
Tensor Tensor::ones(Shape shape) { return full(std::move(shape), 1.0f); }

Tensor Tensor::full(Shape shape, float value) {
  Tensor t = empty(std::move(shape));
  t.fill(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, Shape shape) {
  return from_span(values, std::move(shape));
}

Tensor Tensor::from_span(std::span<const float> values, Shape shape) {
  Tensor t = empty(std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.numel()) {
    throw UsageError(fmt::format("from_span: {} values do not fill shape {}", values.size(),
                                 shape_str(t.shape())));
  }
  if (!values.empty()) std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  return t;
}

int64_t Tensor::size(int64_t d) const {
  const int64_t n = dim();
  const int64_t i = d < 0 ? d + n : d;
  if (i < 0 || i >= n) {
    throw UsageError(fmt::format("dimension {} out of range for shape {}", d, shape_str(shape_)));
  }
  return shape_[static_cast<size_t>(i)];
}

float Tensor::item() const {
  if (numel_ != 1) {
    throw UsageError(fmt::format("item() needs one element, shape is {}", shape_str(shape_)));
  }
  return data()[0];
}

float Tensor::at(std::initializer_list<int64_t> index) const {
  if (static_cast<int64_t>(index.size()) != dim()) {
    throw UsageError(fmt::format("at(): {} indices for shape {}", index.size(), shape_str(shape_)));
  }
  int64_t flat = 0;
  size_t d = 0;
  for (int64_t i : index) {
    if (i < 0 || i >= shape_[d]) {
      throw UsageError(fmt::format("at(): index {} out of range in dimension {} of shape {}", i, d,
                                   shape_str(shape_)));
    }
    flat = flat * shape_[d] + i;
    ++d;
  }
  return data()[flat];
}

Tensor Tensor::reshape(Shape shape) const {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0)
        throw UsageError(fmt::format("reshape: two -1 extents in {}", shape_str(shape)));
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel_ % known != 0) {
      throw UsageError(
          fmt::format("reshape: cannot view {} as {}", shape_str(shape_), shape_str(shape)));
    }
    shape[static_cast<size_t>(infer)] = numel_ / known;
  }
  if (shape_numel(shape) != numel_) {
    throw UsageError(
        fmt::format("reshape: cannot view {} as {}", shape_str(shape_), shape_str(shape)));
  }
  return Tensor(storage_, offset_, std::move(shape));
}

Tensor Tensor::narrow(int64_t start, int64_t length) const {
  if (dim() == 0 || start < 0 || length < 0 || start + length > shape_[0]) {
    throw UsageError(fmt::format("narrow: rows [{}, {}) out of range for shape {}", start,
                                 start + length, shape_str(shape_)));
  }
  Shape shape = shape_;
  shape[0] = length;
  const int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  return Tensor(storage_, offset_ + start * row, std::move(shape));
}

Tensor Tensor::clone() const {
  if (!defined()) return Tensor();
  Tensor t = empty(shape_);
  t.copy_from(*this);
  return t;
}

void Tensor::fill(float value) const { std::fill_n(data(), numel_, value); }

void Tensor::copy_from(const Tensor& src) const {
  if (src.numel() != numel_) {
    throw UsageError(fmt::format("copy_from: source {} has {} elements, destination {} has {}",
                                 shape_str(src.shape()), src.numel(), shape_str(shape_), numel_));
  }
  if (numel_ > 0 && src.data() != data()) std::memcpy(data(), src.data(), numel_ * sizeof(float));
}

void check_same_shape(const Tensor& expected, const Tensor& got, const char* what) {
  if (expected.shape() != got.shape()) {
    throw UsageError(fmt::format("{}: expected shape {}, got {}", what, shape_str(expected.shape()),
                                 shape_str(got.shape())));
  }
}

}  // namespace dtrain
