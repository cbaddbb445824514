// Tensor: a buffer with a shape, an element type and a device. CPU compute is fp32; on the GPU
// the projection weights and their inputs may be bf16 or f16 (everything else stays fp32).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace mamba2 {

enum class Device { CPU, CUDA };
std::string_view device_name(Device device);  // "cpu", "cuda"

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);  // "(3352, 768)"
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised; 64-byte aligned on the CPU, from the stream-ordered pool on the GPU.
  static Tensor empty(Shape shape, Device device = Device::CPU, DType dtype = DType::F32);
  static Tensor zeros(Shape shape, Device device = Device::CPU, DType dtype = DType::F32);
  // A view of fp32 memory owned by `owner` (e.g. a read-only file mapping): never written through.
  static Tensor borrow(const float* data, Shape shape, std::shared_ptr<const void> owner);
  // The same for elements of any dtype (a mapped checkpoint's bf16 or block-quantized matrix).
  static Tensor borrow(const void* data, Shape shape, DType dtype, std::shared_ptr<const void> owner);

  // The elements as fp32 (fails for another dtype). On the GPU: a device pointer.
  float* data() { return f32(); }
  const float* data() const { return const_cast<Tensor*>(this)->f32(); }
  void* raw() { return data_; }
  const void* raw() const { return data_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t rank() const { return shape_.size(); }
  int64_t numel() const { return shape_numel(shape_); }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  bool defined() const { return data_ != nullptr || numel() == 0; }
  size_t nbytes() const { return dtype_bytes(dtype_, size_t(numel())); }

  // Every element 0, on whichever device.
  void set_zero();

  // The first n elements, as a 1-D tensor on the same device sharing this one's storage.
  Tensor prefix(int64_t n) const;
  // Elements [offset, offset + numel(shape)) as a tensor of `shape`, sharing this one's storage.
  Tensor view(int64_t offset, Shape shape) const;

  // A copy on `device` in `dtype` (converted on the host; fp32 ↔ bf16/f16 round to nearest even;
  // Q8_0 and Q4_0, on the CPU only, quantize each row's blocks of 32: rows a multiple of 32 long).
  Tensor to(Device device, DType dtype) const;

 private:
  float* f32();

  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  Shape shape_;
  Device device_ = Device::CPU;
  DType dtype_ = DType::F32;
};

}  // namespace mamba2
