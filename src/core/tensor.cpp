#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "mamba2/error.h"

namespace mamba2 {

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

Tensor Tensor::empty(Shape shape, Device device) {
  for (int64_t d : shape)
    if (d < 0) fail("[tensor] negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.device_ = device;
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  if (bytes == 0) return t;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) fail("[tensor] out of memory allocating {} bytes for {}", bytes, shape_str(t.shape_));
  t.storage_ = std::shared_ptr<float>(static_cast<float*>(p), [](float* q) { std::free(q); });
  t.data_ = t.storage_.get();
  return t;
}

Tensor Tensor::borrow(const float* data, Shape shape, std::shared_ptr<const void> owner) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.storage_ = std::shared_ptr<float>(std::const_pointer_cast<void>(std::move(owner)), const_cast<float*>(data));
  t.data_ = t.storage_.get();
  return t;
}

Tensor Tensor::zeros(Shape shape, Device device) {
  Tensor t = empty(std::move(shape), device);
  if (t.nbytes()) std::memset(t.data_, 0, t.nbytes());
  return t;
}

}  // namespace mamba2
