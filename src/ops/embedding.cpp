#include "cpu/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

void embedding(const Tensor& table, std::span<const int32_t> ids, MatView out) {
  const int64_t vocab = table.dim(0), d = table.dim(1);
  check_shape("embedding", "out", out, int64_t(ids.size()), d);
  if (out.ld != d) fail("[embedding] out must be contiguous");
  for (size_t t = 0; t < ids.size(); ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      fail("[embedding] token id {} at position {} is out of range [0, {})", ids[t], t, vocab);
  cpu::embedding_forward(table.data(), d, ids.data(), int64_t(ids.size()), out.data);
}

}  // namespace mamba2::ops
