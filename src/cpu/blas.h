// Row-major GEMM over the scalar type of the kernel: C = alpha·op(A)·op(B) + beta·C through
// cblas_sgemm or cblas_dgemm, so that a kernel templated on T (float for inference and
// training, double for the gradient checks) calls the BLAS of its type. The first call settles
// which OpenBLAS kernels run (blas.cpp).
#pragma once
#include <cblas.h>

#include <cstdint>

namespace mamba2::cpu {

// Once per process, before OpenBLAS computes anything: kernels for a CPU it did not recognise.
void ensure_blas_core();

inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  ensure_blas_core();
  cblas_sgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, double alpha,
                 const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  ensure_blas_core();
  cblas_dgemm(CblasRowMajor, ta, tb, int(m), int(n), int(k), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

}  // namespace mamba2::cpu
