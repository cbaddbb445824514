// fp32 rows to another float dtype, rounded to nearest even (core/dtype.h's conversions).
#include "cpu/kernels.h"

namespace mamba2::cpu {

void cast_rows(const float* src, int64_t lds, void* dst, DType dtype, int64_t ldd, int64_t rows, int64_t cols) {
  const size_t es = dtype_size(dtype);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    convert_from_f32(dtype, src + r * lds, static_cast<char*>(dst) + size_t(r * ldd) * es, size_t(cols));
}

}  // namespace mamba2::cpu
