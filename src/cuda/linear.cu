// Projections on the GPU: y (fp32) = x @ Wᵀ with x, W in the compute dtype and fp32 accumulation
// (f32: true fp32, no TF32).
//
// Prefill: cuBLASLt. Its heuristic picks a kernel by shape, so two row counts may round a row
// differently: we ask it once per (n, k, dtype, alignment) at a fixed row count, force that
// algorithm to no split-K (no reduction across k pieces) and use it for every m. Each output
// element is then one accumulation over k in the kernel's fixed order, whatever m.
//
// Decode (a few rows, one per sequence) in f32: our streaming kernel, a warp per pair of output
// columns, each lane summing its 8-element slices of k in order, then a fixed shuffle tree, so a
// row's sum never depends on the other rows (cuBLAS's fp32 kernels for few rows ran 2.7x slower
// on the H200, 2026-11-30). In bf16/f16 cuBLASLt's plan for a few rows was faster than ours at
// every batch size measured (1 to 256): decode uses it, chosen at 16 rows and kept for every m,
// as for prefill. The choice depends on the dtype only, never on m.
#include <cublasLt.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
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
  std::map<std::tuple<int64_t, int64_t, int, bool, uint32_t, int64_t>, Plan> plans;
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

// MAMBA2_BATCH_INVARIANT=0 trades batch invariance for the heuristic's own pick at each row
// count (split-K allowed): a row's bits may then depend on its batch. It exists to measure what
// invariance costs (bench/RESULTS.md); the default keeps it.
bool batch_invariant() {
  static const bool on = [] {
    const char* e = std::getenv("MAMBA2_BATCH_INVARIANT");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

// rows > 0: the heuristic's first pick at that row count, as is (batch invariance off).
Plan make_plan(Blas& bl, DType dtype, int64_t n, int64_t k, bool decode, uint32_t align, int64_t rows) {
  Plan plan;
  check_blas(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "descriptor");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_blas(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "descriptor");
  check_blas(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "descriptor");
  Layouts l(dtype, rows > 0 ? rows : decode ? kDecodeRows : kPrefillRows, n, k, k, n);
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
  if (rows > 0 && found > 0 && results[0].workspaceSize <= kWorkspaceBytes) {
    plan.algo = results[0].algo;
    return plan;
  }
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

constexpr int kWarps = 8;     // per block
constexpr int kCols = 2;      // output columns per warp
constexpr int kRows = 4;      // rows of x per pass (W's slices stay in registers across them)

// 8 consecutive elements as fp32; `vec`: one 16-byte load (bf16/f16) or two (fp32).
template <class T, bool vec>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  if constexpr (vec && sizeof(T) == 2) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = load_f32(e + i);
  } else if constexpr (vec) {
    const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = load_f32(p + i);
  }
}

template <class T, bool vec>
__global__ void __launch_bounds__(kWarps * 32) rows_kernel(const T* x, int64_t ldx, const T* W, float* y, int64_t ldy,
                                                           int64_t m, int64_t n, int64_t k) {
  const int lane = threadIdx.x % 32;
  const int64_t col0 = (int64_t(blockIdx.x) * kWarps + threadIdx.x / 32) * kCols;
  if (col0 >= n) return;
  const int64_t k8 = k / 8 * 8;
  for (int64_t r0 = 0; r0 < m; r0 += kRows) {
    float acc[kCols][kRows] = {};
    for (int64_t kk = int64_t(lane) * 8; kk < k8; kk += 256) {
      float xv[kRows][8];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r0 + r < m) {
          load8<T, vec>(x + (r0 + r) * ldx + kk, xv[r]);
        } else {
#pragma unroll
          for (int i = 0; i < 8; ++i) xv[r][i] = 0.0f;
        }
      }
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        if (col0 + c >= n) break;
        float wv[8];
        load8<T, vec>(W + (col0 + c) * k + kk, wv);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[c][r] = fmaf(wv[i], xv[r][i], acc[c][r]);
      }
    }
    for (int64_t kk = k8 + lane; kk < k; kk += 32)  // the last k % 8 elements
#pragma unroll
      for (int c = 0; c < kCols; ++c)
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (col0 + c < n && r0 + r < m)
            acc[c][r] = fmaf(load_f32(W + (col0 + c) * k + kk), load_f32(x + (r0 + r) * ldx + kk), acc[c][r]);
#pragma unroll
    for (int c = 0; c < kCols; ++c)
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float v = acc[c][r];
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0 && col0 + c < n && r0 + r < m) y[(r0 + r) * ldy + col0 + c] = v;
      }
  }
}

void linear_rows(const void* x, int64_t ldx, const void* W, DType dtype, float* y, int64_t ldy, int64_t m, int64_t n,
                 int64_t k) {
  const uint64_t es = dtype_size(dtype);
  // 16-byte loads need 16-byte aligned rows; the choice depends on the buffers, never on m.
  const bool vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0 &&
                   (uint64_t(ldx) * es) % 16 == 0 && (uint64_t(k) * es) % 16 == 0;
  const unsigned blocks = unsigned(ceil_div(n, int64_t(kWarps) * kCols));
  with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (vec)
      rows_kernel<T, true><<<blocks, kWarps * 32, 0, stream()>>>(static_cast<const T*>(x), ldx,
                                                                  static_cast<const T*>(W), y, ldy, m, n, k);
    else
      rows_kernel<T, false><<<blocks, kWarps * 32, 0, stream()>>>(static_cast<const T*>(x), ldx,
                                                                   static_cast<const T*>(W), y, ldy, m, n, k);
  });
  check_launch("linear");
}

}  // namespace

void linear_forward(const void* x, int64_t ldx, const void* W, DType dtype, float* y, int64_t ldy, int64_t m,
                    int64_t n, int64_t k, bool decode) {
  if (m == 0 || n == 0) return;
  if (decode && dtype == DType::F32) {
    linear_rows(x, ldx, W, dtype, y, ldy, m, n, k);
    return;
  }
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
    const int64_t rows = batch_invariant() ? 0 : m;
    auto key = std::make_tuple(n, k, int(dtype), decode, align, rows);
    auto it = bl.plans.find(key);
    if (it == bl.plans.end()) it = bl.plans.emplace(key, make_plan(bl, dtype, n, k, decode, align, rows)).first;
    plan = &it->second;
  }
  Layouts l(dtype, m, n, k, ldx, ldy);
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t st = cublasLtMatmul(bl.handle, plan->desc, &one, W, l.a, x, l.b, &zero, y, l.c, y, l.c,
                                           &plan->algo, bl.workspace.get(), kWorkspaceBytes, stream());
  if (st != CUBLAS_STATUS_SUCCESS)
    raise(cat("[linear] cuBLASLt matmul (", m, " x ", n, " x ", k, ", ", dtype_name(dtype), ", ",
              decode ? "decode" : "prefill", " plan, ", align, "-byte aligned): status ", int(st)));
}

}  // namespace mamba2::cuda
