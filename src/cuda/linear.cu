// Projections on the GPU through cuBLASLt: y (fp32) = x @ Wᵀ with x, W in the compute dtype and
// fp32 accumulation (f32: CUBLAS_COMPUTE_32F, true fp32, no TF32).
//
// Batch invariance: cuBLASLt's heuristic picks a kernel by shape, so two row counts may round a
// row differently. We ask the heuristic once per (n, k, dtype, family) at a fixed row count,
// force that algorithm to no split-K (no reduction across k pieces) and use it for every m: each
// output element is then one accumulation over k in the kernel's fixed order, whatever m.
#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

void check_blas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) raise(cat("[linear] cuBLASLt ", what, ": status ", int(st)));
}

cudaDataType_t cuda_type(DType d) {
  switch (d) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

constexpr size_t kWorkspaceBytes = size_t(32) << 20;
constexpr int64_t kPrefillRows = 4096, kDecodeRows = 16;  // the row counts the algorithms are chosen at

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct Blas {
  cublasLtHandle_t handle = nullptr;
  std::shared_ptr<void> workspace;
  std::map<std::tuple<int64_t, int64_t, int, bool, uint32_t>, Plan> plans;
  std::mutex mutex;
};

Blas& blas() {
  static Blas* b = [] {
    auto* p = new Blas;  // lives as long as the process (freed buffers outlive static destruction)
    check_blas(cublasLtCreate(&p->handle), "create");
    p->workspace = allocate(kWorkspaceBytes, "cuBLASLt workspace");
    return p;
  }();
  return *b;
}

// Column-major view of the row-major product: yᵀ (n × m) = W (k × n, transposed) · xᵀ (k × m).
struct Layouts {
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  Layouts(DType dtype, int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy) {
    check_blas(cublasLtMatrixLayoutCreate(&a, cuda_type(dtype), uint64_t(k), uint64_t(n), k), "layout");
    check_blas(cublasLtMatrixLayoutCreate(&b, cuda_type(dtype), uint64_t(k), uint64_t(m), ldx), "layout");
    check_blas(cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, uint64_t(n), uint64_t(m), ldy), "layout");
  }
  ~Layouts() {
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
  }
};

// Row counts an algorithm must run at to be chosen: it will be used for every m.
constexpr int64_t kCheckRows[] = {1, 2, 3, 5, 8, 16, 33, 64, 255, 1024, 4096};

Plan make_plan(Blas& bl, DType dtype, int64_t n, int64_t k, bool decode, uint32_t align) {
  Plan plan;
  check_blas(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "descriptor");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_blas(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "descriptor");
  check_blas(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "descriptor");
  const int64_t m = decode ? kDecodeRows : kPrefillRows;
  Layouts l(dtype, m, n, k, k, n);
  cublasLtMatmulPreference_t pref = nullptr;
  check_blas(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const uint64_t ws = kWorkspaceBytes;
  check_blas(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
             "preference");
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    check_blas(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align)), "preference");
  constexpr int kWanted = 32;
  cublasLtMatmulHeuristicResult_t results[kWanted];
  int found = 0;
  check_blas(cublasLtMatmulAlgoGetHeuristic(bl.handle, plan.desc, l.a, l.b, l.c, l.c, pref, kWanted, results, &found),
             "heuristic");
  cublasLtMatmulPreferenceDestroy(pref);
  // The first algorithm that, forced to one k piece and no reduction, runs at every row count.
  for (int i = 0; i < found; ++i) {
    cublasLtMatmulAlgo_t algo = results[i].algo;
    const int32_t splitk = 1;
    const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
    if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk)) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction,
                                             sizeof(reduction)) != CUBLAS_STATUS_SUCCESS)
      continue;
    bool runs_everywhere = true;
    for (int64_t rows : kCheckRows) {
      Layouts lr(dtype, rows, n, k, k, n);
      cublasLtMatmulHeuristicResult_t checked{};
      if (cublasLtMatmulAlgoCheck(bl.handle, plan.desc, lr.a, lr.b, lr.c, lr.c, &algo, &checked) !=
              CUBLAS_STATUS_SUCCESS ||
          checked.workspaceSize > kWorkspaceBytes) {
        runs_everywhere = false;
        break;
      }
    }
    if (runs_everywhere) {
      plan.algo = algo;
      return plan;
    }
  }
  raise(cat("[linear] cuBLASLt has no algorithm without split-K that runs at every row count for (", n, " x ", k,
            ") ", dtype_name(dtype), " weights (", found, " candidates)"));
}

// The largest power of two ≤ 16 that divides every address and row stride in bytes.
uint32_t alignment(std::initializer_list<uint64_t> values) {
  uint32_t a = 16;
  for (uint64_t v : values)
    while (v % a) a /= 2;
  return a;
}

}  // namespace

void linear_forward(const void* x, int64_t ldx, const void* W, DType dtype, float* y, int64_t ldy, int64_t m,
                    int64_t n, int64_t k, bool decode) {
  if (m == 0 || n == 0) return;
  Blas& bl = blas();
  const uint64_t es = dtype_size(dtype);
  // The model's operands are whole pool buffers with row strides of whole vectors: the alignment
  // (and so the algorithm) is the same for every call of a projection.
  const uint32_t align = alignment({uint64_t(reinterpret_cast<uintptr_t>(x)), uint64_t(reinterpret_cast<uintptr_t>(W)),
                                    uint64_t(reinterpret_cast<uintptr_t>(y)), uint64_t(ldx) * es, uint64_t(k) * es,
                                    uint64_t(ldy) * 4});
  const Plan* plan;
  {
    std::lock_guard<std::mutex> lock(bl.mutex);
    auto key = std::make_tuple(n, k, int(dtype), decode, align);
    auto it = bl.plans.find(key);
    if (it == bl.plans.end()) it = bl.plans.emplace(key, make_plan(bl, dtype, n, k, decode, align)).first;
    plan = &it->second;
  }
  Layouts l(dtype, m, n, k, ldx, ldy);
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t st = cublasLtMatmul(bl.handle, plan->desc, &one, W, l.a, x, l.b, &zero, y, l.c, y, l.c,
                                           &plan->algo, bl.workspace.get(), kWorkspaceBytes, stream());
  if (st != CUBLAS_STATUS_SUCCESS)
    raise(cat("[linear] cuBLASLt matmul (", m, " x ", n, " x ", k, ", ", dtype_name(dtype), ", ",
              decode ? "decode" : "prefill", " algorithm, ", align, "-byte aligned): status ", int(st)));
}

}  // namespace mamba2::cuda
