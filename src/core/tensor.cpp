#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "cuda/runtime.h"
#include "mamba2/error.h"

namespace mamba2 {

std::string_view device_name(Device device) { return device == Device::CUDA ? "cuda" : "cpu"; }

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor Tensor::empty(Shape shape, Device device, DType dtype) {
  for (int64_t d : shape)
    if (d < 0) fail("[tensor] negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.device_ = device;
  t.dtype_ = dtype;
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  if (bytes == 0) return t;
  if (device == Device::CUDA) {
    t.storage_ = cuda::allocate(bytes, "a tensor");
  } else {
    void* p = std::aligned_alloc(64, bytes);
    if (!p) fail("[tensor] out of memory allocating {} bytes for {}", bytes, shape_str(t.shape_));
    t.storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  }
  t.data_ = t.storage_.get();
  return t;
}

Tensor Tensor::borrow(const float* data, Shape shape, std::shared_ptr<const void> owner) {
  return borrow(static_cast<const void*>(data), std::move(shape), DType::F32, std::move(owner));
}

Tensor Tensor::borrow(const void* data, Shape shape, DType dtype, std::shared_ptr<const void> owner) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.storage_ = std::shared_ptr<void>(std::const_pointer_cast<void>(std::move(owner)), const_cast<void*>(data));
  t.data_ = t.storage_.get();
  return t;
}

Tensor Tensor::prefix(int64_t n) const {
  if (n < 0 || n > numel()) fail("[tensor] a prefix of {} elements of a tensor of {}", n, numel());
  Tensor t = *this;
  t.shape_ = {n};
  return t;
}

Tensor Tensor::view(int64_t offset, Shape shape) const {
  const int64_t n = shape_numel(shape);
  if (offset < 0 || n < 0 || offset > numel() - n)
    fail("[tensor] a view of {} elements at {} of a tensor of {}", n, offset, numel());
  Tensor t = *this;
  t.data_ = static_cast<char*>(data_) + dtype_bytes(dtype_, size_t(offset));
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::zeros(Shape shape, Device device, DType dtype) {
  Tensor t = empty(std::move(shape), device, dtype);
  t.set_zero();
  return t;
}

void Tensor::set_zero() {
  if (!nbytes()) return;
  if (device_ == Device::CUDA)
    cuda::fill_zero(data_, nbytes());
  else
    std::memset(data_, 0, nbytes());
}

float* Tensor::f32() {
  if (dtype_ != DType::F32) fail("[tensor] {} tensor {} read as F32", dtype_name(dtype_), shape_str(shape_));
  return static_cast<float*>(data_);
}

Tensor Tensor::to(Device device, DType dtype) const {
  Tensor host = *this;  // this tensor's bytes on the host
  if (device_ == Device::CUDA) {
    host = empty(shape_, Device::CPU, dtype_);
    cuda::copy_to_host(host.data_, data_, nbytes());
  }
  const size_t n = size_t(numel());
  if (is_quantized(dtype) && dtype_ != dtype) {
    if (device == Device::CUDA) fail("[tensor] {} weights are for the CPU", dtype_name(dtype));
    if (shape_.empty() || shape_.back() % kQuantBlock)
      fail("[tensor] {} quantizes rows of a multiple of {} elements, not {}", dtype_name(dtype), kQuantBlock,
           shape_str(shape_));
  }
  if (dtype != dtype_) {
    Tensor f32 = host;
    if (dtype_ != DType::F32) {
      f32 = empty(shape_, Device::CPU, DType::F32);
      convert_to_f32(dtype_, host.data_, static_cast<float*>(f32.data_), n);
    }
    host = f32;
    if (dtype != DType::F32) {
      host = empty(shape_, Device::CPU, dtype);
      convert_from_f32(dtype, static_cast<const float*>(f32.data_), host.data_, n);
    }
  } else if (device == Device::CPU && device_ == Device::CPU) {
    host = empty(shape_, Device::CPU, dtype_);
    if (n) std::memcpy(host.data_, data_, nbytes());
  }
  if (device == Device::CPU) return host;
  Tensor out = empty(shape_, Device::CUDA, dtype);
  cuda::copy_to_device(out.data_, host.data_, out.nbytes());
  return out;
}

}  // namespace mamba2
