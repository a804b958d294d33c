#include "tensor/tensor.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "tensor/storage_pool.h"

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

size_t storage_bytes(int64_t count) {
  return static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(float);
}

}  // namespace

Storage::Storage(int64_t count)
    : data_(static_cast<float*>(allocate_storage(storage_bytes(count)))), size_(count) {}

Storage::~Storage() { release_storage(data_, storage_bytes(size_)); }

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
