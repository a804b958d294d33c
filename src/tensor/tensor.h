// Tensor: a float32 CPU array with a shape, over shared contiguous storage.
//
// A Tensor is a handle: copying one is cheap and aliases the same storage
// (like torch.Tensor); clone() copies the data. Every Tensor is contiguous in
// row-major order; views (reshape, narrow along dimension 0) share storage
// and are contiguous too, so every kernel can walk data() linearly. Storage is
// 64-byte aligned.
//
// Ownership: storage is held by std::shared_ptr and given back with its last
// view to the process's caching allocator (tensor/storage_pool.h), which
// hands it to the next allocation of its size class, so that a training
// loop does not take (and fault in) fresh memory every step: a steady-state
// step allocates nothing from the system.
// Thread safety: distinct Tensors may be used from distinct threads; writing
// to one storage from two threads at once is a data race, as with any array.
// Errors: shape mistakes throw UsageError naming both shapes.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace dtrain {

using Shape = std::vector<int64_t>;

// "(128, 784)"
std::string shape_str(const Shape& shape);
// Product of the extents; 1 for a scalar (empty shape).
int64_t shape_numel(const Shape& shape);

// Aligned, owned float buffer. Not copyable.
class Storage {
 public:
  explicit Storage(int64_t count);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  float* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  float* data_ = nullptr;
  int64_t size_ = 0;
};

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false

  // Uninitialised contents.
  static Tensor empty(Shape shape);
  static Tensor zeros(Shape shape);
  static Tensor ones(Shape shape);
  static Tensor full(Shape shape, float value);
  static Tensor scalar(float value) { return full({}, value); }
  // Copies `values`; their count must equal the shape's.
  static Tensor from_vector(const std::vector<float>& values, Shape shape);
  static Tensor from_span(std::span<const float> values, Shape shape);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  // Extent of dimension d; negative d counts from the end.
  int64_t size(int64_t d) const;
  int64_t numel() const { return numel_; }

  // Handle semantics: a const Tensor still gives mutable access to its
  // elements, as torch.Tensor does.
  float* data() const { return storage_ ? storage_->data() + offset_ : nullptr; }
  std::span<float> span() const { return {data(), static_cast<size_t>(numel_)}; }
  std::vector<float> to_vector() const { return {data(), data() + numel_}; }
  // The single element of a one-element tensor.
  float item() const;
  // Element at a full index (slow; for tests and debugging).
  float at(std::initializer_list<int64_t> index) const;

  // A view with another shape of equal numel; one extent may be -1.
  Tensor reshape(Shape shape) const;
  // A view of rows [start, start + length) along dimension 0.
  Tensor narrow(int64_t start, int64_t length) const;
  // A deep copy with fresh storage.
  Tensor clone() const;

  // In-place fills and copies; `src` must have the same numel.
  void fill(float value) const;
  void zero() const { fill(0.0f); }
  void copy_from(const Tensor& src) const;

  bool same_storage(const Tensor& other) const { return storage_ == other.storage_; }

 private:
  Tensor(std::shared_ptr<Storage> storage, int64_t offset, Shape shape);

  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;
  Shape shape_;
  int64_t numel_ = 0;
};

// Throws UsageError "<what>: expected shape A, got B" when they differ.
void check_same_shape(const Tensor& expected, const Tensor& got, const char* what);

}  // namespace dtrain
