// Tensor: an fp32 buffer with a shape, on a device. Compute is fp32 everywhere for now; the
// checkpoint dtypes are converted when weights are loaded (see model/weights.cpp).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace mamba2 {

enum class Device { CPU };

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);  // "(3352, 768)"
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised, 64-byte aligned.
  static Tensor empty(Shape shape, Device device = Device::CPU);
  static Tensor zeros(Shape shape, Device device = Device::CPU);
  // A view of memory owned by `owner` (e.g. a read-only file mapping): never written through.
  static Tensor borrow(const float* data, Shape shape, std::shared_ptr<const void> owner);

  float* data() { return data_; }
  const float* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t rank() const { return shape_.size(); }
  int64_t numel() const { return shape_numel(shape_); }
  Device device() const { return device_; }
  bool defined() const { return data_ != nullptr || numel() == 0; }
  size_t nbytes() const { return size_t(numel()) * sizeof(float); }

 private:
  std::shared_ptr<float> storage_;
  float* data_ = nullptr;
  Shape shape_;
  Device device_ = Device::CPU;
};

}  // namespace mamba2
