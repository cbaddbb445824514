// Projections on the GPU: y (fp32) = x @ Wᵀ with x, W in the compute dtype and fp32 accumulation
// (f32: true fp32, no TF32).
//
// Prefill: cuBLASLt. Its heuristic picks a kernel by shape, so two row counts may round a row
// differently: we ask it once per (n, k, dtype, alignment) at a fixed row count, force that
// algorithm to no split-K (no reduction across k pieces) and use it for every m. Each output
// element is then one accumulation over k in the kernel's fixed order, whatever m.
//
// Decode (a few rows, one per sequence): our own kernels, which stream W once with many loads in
// flight (cuBLASLt's few-row kernels reached a fraction of the memory bandwidth: 5.9 µs for the
// 130m in_proj, whose 5 MB take ~1 µs): f32 on CUDA cores, bf16/f16 on tensor cores. In both a
// row's sum runs in an order fixed by k alone, so no choice depends on m.
#include <cooperative_groups.h>
#include <cublasLt.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/dynamic_library.h"
#include "cuda/causal_conv1d.cuh"
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/mma.cuh"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

// cuBLASLt through dlopen, once, at the first product on the GPU: linking it made every process
// load its 500 MB and relocate it at start (~0.1 s, CPU-only runs included), and a build with the
// CUDA backend would not start at all on a machine without it. The soname first (LD_LIBRARY_PATH,
// the binary's rpath, the loader's cache), then the toolkit this was built with.
struct Lt {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtMatmul) matmul;
  decltype(&cublasLtMatmulAlgoCheck) algo_check;
  decltype(&cublasLtMatmulAlgoConfigSetAttribute) algo_config_set;
  decltype(&cublasLtMatmulAlgoGetHeuristic) algo_get_heuristic;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatmulPreferenceCreate) preference_create;
  decltype(&cublasLtMatmulPreferenceDestroy) preference_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) preference_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatrixLayoutSetAttribute) layout_set;
};

const Lt& lt() {
  static Lt t;
  static const std::string error = [] {  // bound once (a thread-safe static); a failure is kept
    const std::string soname = cat("libcublasLt.so.", CUBLAS_VER_MAJOR);
    std::string why;
    void* lib = open_library({soname, cat(MAMBA2_CUDA_LIBRARY_DIR, "/", soname)}, why);
    if (!lib)
      return cat("[linear] cannot load ", soname, " (", why, "): the CUDA backend needs cuBLASLt ", CUBLAS_VER_MAJOR,
                 " on the library path (LD_LIBRARY_PATH), e.g. the CUDA toolkit's or pip's nvidia-cublas");
    std::string missing;
    auto sym = [&](auto& fn, const char* name) {
      if (!bind_symbol(lib, fn, name) && missing.empty()) missing = cat("[linear] ", soname, " has no ", name);
    };
    sym(t.create, "cublasLtCreate");
    sym(t.matmul, "cublasLtMatmul");
    sym(t.algo_check, "cublasLtMatmulAlgoCheck");
    sym(t.algo_config_set, "cublasLtMatmulAlgoConfigSetAttribute");
    sym(t.algo_get_heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(t.desc_create, "cublasLtMatmulDescCreate");
    sym(t.desc_set, "cublasLtMatmulDescSetAttribute");
    sym(t.preference_create, "cublasLtMatmulPreferenceCreate");
    sym(t.preference_destroy, "cublasLtMatmulPreferenceDestroy");
    sym(t.preference_set, "cublasLtMatmulPreferenceSetAttribute");
    sym(t.layout_create, "cublasLtMatrixLayoutCreate");
    sym(t.layout_destroy, "cublasLtMatrixLayoutDestroy");
    sym(t.layout_set, "cublasLtMatrixLayoutSetAttribute");
    return missing;
  }();
  if (!error.empty()) raise(error);
  return t;
}

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
constexpr int64_t kPlanRows = 4096;  // the row count the algorithms are chosen at

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  int splitk = 1;  // > 1: at most kPlanRows rows a call (the workspace holds the pieces of that many)
};

struct Blas {
  cublasLtHandle_t handle = nullptr;
  std::shared_ptr<void> workspace;
  std::shared_ptr<void> side_workspace;  // an Overlap's side stream's: products may run on both at once
  // n, k, dtype, align, rows, tf32, y's dtype
  std::map<std::tuple<int64_t, int64_t, int, uint32_t, int64_t, bool, int>, Plan> plans;
  std::mutex mutex;
};

Blas& blas() {
  static Blas* b = [] {
    auto* p = new Blas;  // lives as long as the process (freed buffers outlive static destruction)
    check_blas(lt().create(&p->handle), "create");
    p->workspace = allocate(kWorkspaceBytes, "cuBLASLt workspace");
    p->side_workspace = allocate(kWorkspaceBytes, "cuBLASLt workspace");
    return p;
  }();
  return *b;
}

// The workspace of the stream the product runs on.
void* workspace(Blas& bl) { return (on_side_stream() ? bl.side_workspace : bl.workspace).get(); }

// Column-major view of the row-major product: yᵀ (n × m) = W (k × n, transposed) · xᵀ (k × m).
struct Layouts {
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  Layouts(DType dtype, int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldy, DType y_dtype) {
    check_blas(lt().layout_create(&a, cuda_type(dtype), uint64_t(k), uint64_t(n), k), "layout");
    check_blas(lt().layout_create(&b, cuda_type(dtype), uint64_t(k), uint64_t(m), ldx), "layout");
    check_blas(lt().layout_create(&c, cuda_type(y_dtype), uint64_t(n), uint64_t(m), ldy), "layout");
  }
  ~Layouts() {
    lt().layout_destroy(a);
    lt().layout_destroy(b);
    lt().layout_destroy(c);
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

// fp32 sums; tf32 lets an f32 product round its operands to TF32 on the tensor cores.
cublasComputeType_t compute_type(DType dtype, bool tf32) {
  return tf32 && dtype == DType::F32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

// algo with k in `split` pieces and that reduction scheme; false where cuBLASLt refuses either.
bool set_split(cublasLtMatmulAlgo_t& algo, int32_t split, uint32_t reduction) {
  return lt().algo_config_set(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof(split)) ==
             CUBLAS_STATUS_SUCCESS &&
         lt().algo_config_set(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof(reduction)) ==
             CUBLAS_STATUS_SUCCESS;
}

// Whether algo runs at every row count of kCheckRows within the workspace.
bool runs_at_every_row_count(Blas& bl, const Plan& plan, const cublasLtMatmulAlgo_t& algo, DType dtype, int64_t n,
                             int64_t k, DType y_dtype) {
  for (int64_t rows : kCheckRows) {
    Layouts lr(dtype, rows, n, k, k, n, y_dtype);
    cublasLtMatmulHeuristicResult_t checked{};
    if (lt().algo_check(bl.handle, plan.desc, lr.a, lr.b, lr.c, lr.c, &algo, &checked) !=
            CUBLAS_STATUS_SUCCESS ||
        checked.workspaceSize > kWorkspaceBytes)
      return false;
  }
  return true;
}

// An fp32 W of few columns (Mamba-1's x_proj: 80 × 1536 at 130m, 192 × 5120 at 2.8b) gives a
// product of one k piece a few dozen output tiles for 132 SMs (24 at 2.8b: 467 µs of a 1.3 ms
// layer, bench/RESULTS.md). Cut k into `split` pieces, their partial products summed in fp32
// in a separate step (not in place, whose order of additions is not fixed). The count follows
// (n, k) alone, never m, so a row's bits still do not depend on its batch.
void split_few_columns(Blas& bl, Plan& plan, DType dtype, int64_t n, int64_t k) {
  if (dtype != DType::F32 || n > 256) return;
  for (int split = int(std::clamp<int64_t>(k / 512, 1, 8)); split > 1; split /= 2) {
    cublasLtMatmulAlgo_t algo = plan.algo;
    if (!set_split(algo, split, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE)) return;
    if (runs_at_every_row_count(bl, plan, algo, dtype, n, k, DType::F32)) {
      plan.algo = algo;
      plan.splitk = split;
      return;
    }
  }
}

// rows > 0: the heuristic's first pick at that row count, as is (batch invariance off).
// tf32: an f32 product on TF32 tensor cores. y in y_dtype: F32, or the operands' (rounded once).
Plan make_plan(Blas& bl, DType dtype, int64_t n, int64_t k, uint32_t align, int64_t rows, bool tf32, DType y_dtype) {
  Plan plan;
  check_blas(lt().desc_create(&plan.desc, compute_type(dtype, tf32), CUDA_R_32F), "descriptor");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_blas(lt().desc_set(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "descriptor");
  check_blas(lt().desc_set(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "descriptor");
  Layouts l(dtype, rows > 0 ? rows : kPlanRows, n, k, k, n, y_dtype);
  cublasLtMatmulPreference_t pref = nullptr;
  check_blas(lt().preference_create(&pref), "preference");
  const uint64_t ws = kWorkspaceBytes;
  check_blas(lt().preference_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
             "preference");
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    check_blas(lt().preference_set(pref, attr, &align, sizeof(align)), "preference");
  constexpr int kWanted = 32;
  cublasLtMatmulHeuristicResult_t results[kWanted];
  int found = 0;
  check_blas(lt().algo_get_heuristic(bl.handle, plan.desc, l.a, l.b, l.c, l.c, pref, kWanted, results, &found),
             "heuristic");
  lt().preference_destroy(pref);
  if (rows > 0 && found > 0 && results[0].workspaceSize <= kWorkspaceBytes) {
    plan.algo = results[0].algo;
    return plan;
  }
  // The first algorithm that, forced to one k piece and no reduction, runs at every row count.
  for (int i = 0; i < found; ++i) {
    cublasLtMatmulAlgo_t algo = results[i].algo;
    if (!set_split(algo, 1, CUBLASLT_REDUCTION_SCHEME_NONE)) continue;
    if (runs_at_every_row_count(bl, plan, algo, dtype, n, k, y_dtype)) {
      plan.algo = algo;
      if (y_dtype == DType::F32) split_few_columns(bl, plan, dtype, n, k);
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

// The decode kernels' operand x: `Raw` rows in the compute dtype as given; `Normed` fp32 rows
// normalised on the way in from the producer's partial sums of squares (RowNorm), x = (src·s)·w
// as the norm kernels compute it, rounded to the compute dtype (a block's scales s for the rows
// of its pass live in shared memory, one per (row, group)); `SelfNormed` fp32 rows under an
// RMSNorm whose scale the kernel finds itself: x = src·w rounded to the compute dtype, and the
// row's sum times s = rsqrt(Σ src² / k + eps), Σ src² summed from the very values the block
// loads for the product (a block whose range of k is the whole row, or the cluster's blocks
// added in rank order). No wait for a producer's sums before the first product, and no scale in
// the inner loop: the latency-bound decode step's RMSNorms (one group) take this form.
struct Raw {
  const void* x;
  int64_t ld;
};
struct Normed {
  const float* src;
  int64_t ld;
  RowNorm norm;
  int64_t group_cols;  // k / groups
};
struct SelfNormed {
  const float* src;
  int64_t ld;
  const float* weight;
  float eps;
};

// The scales of rows row0 .. row0 + rows (those < m): warp w takes (row, group) pairs w, w+warps, ...;
// lane l sums the group's partials l, l+32, ... in order, then a fixed tree; lane 0's total.
__device__ void row_scales(const Normed& in, int64_t row0, int rows, int64_t m, int warps, float* scales) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t groups = in.norm.groups, per = in.norm.per;
  for (int64_t pair = warp; pair < rows * groups; pair += warps) {
    const int64_t r = row0 + pair / groups, g = pair % groups;
    float s = 0.0f;
    if (r < m)
      for (int64_t j = lane; j < per; j += 32) s += in.norm.sums[r * in.norm.ld + g * per + j];
    s = warp_sum(s);
    if (lane == 0) scales[pair / groups * kMaxNormGroups + g] = rsqrtf(s / float(in.group_cols) + in.norm.eps);
  }
}

// 8 elements of x's row r from column kk as fp32, zeros past `avail`; `vec`: 16-byte aligned
// rows and groups of whole 8-column pieces. `scales`: the row's, by group. On tensor cores the
// values are rounded to the compute dtype as the operands are packed (pack2), once.
template <class T, bool vec>
__device__ __forceinline__ void load_x(const Raw& in, int64_t r, int64_t kk, int64_t avail, const float*,
                                       float (&v)[8]) {
  const T* p = static_cast<const T*>(in.x) + r * in.ld + kk;
  if (vec && avail >= 8) {
    if constexpr (sizeof(T) == 2) {
      const uint4 raw = *reinterpret_cast<const uint4*>(p);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = load_f32(e + i);
    } else {
      const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = i < avail ? load_f32(p + i) : 0.0f;
}
// The norm group of column kk: no division for the plain RMSNorm (one group), a 32-bit one
// otherwise (a 64-bit division is a long software sequence, and this runs for every load of x).
__device__ __forceinline__ int group_of(const Normed& in, int64_t kk) {
  return in.norm.groups == 1 ? 0 : int(kk) / int(in.group_cols);
}

template <class T, bool vec>
__device__ __forceinline__ void load_x(const Normed& in, int64_t r, int64_t kk, int64_t avail, const float* scales,
                                       float (&v)[8]) {
  const float* p = in.src + r * in.ld + kk;
  const float* w = in.norm.weight + kk;
  if (vec && avail >= 8) {
    const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
    const float4 wa = *reinterpret_cast<const float4*>(w), wb = *reinterpret_cast<const float4*>(w + 4);
    const float s = scales[group_of(in, kk)];
    v[0] = a.x * s * wa.x, v[1] = a.y * s * wa.y, v[2] = a.z * s * wa.z, v[3] = a.w * s * wa.w;
    v[4] = b.x * s * wb.x, v[5] = b.y * s * wb.y, v[6] = b.z * s * wb.z, v[7] = b.w * s * wb.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = i < avail ? p[i] * scales[group_of(in, kk + i)] * w[i] : 0.0f;
  }
}

// x = src·w, and Σ src² of the loaded elements added to ss in element order.
template <class T, bool vec>
__device__ __forceinline__ void load_x(const SelfNormed& in, int64_t r, int64_t kk, int64_t avail, float (&v)[8],
                                       float& ss) {
  const float* p = in.src + r * in.ld + kk;
  const float* w = in.weight + kk;
  float a[8], wv[8];
  if (vec && avail >= 8) {
    const float4 a0 = *reinterpret_cast<const float4*>(p), a1 = *reinterpret_cast<const float4*>(p + 4);
    const float4 w0 = *reinterpret_cast<const float4*>(w), w1 = *reinterpret_cast<const float4*>(w + 4);
    a[0] = a0.x, a[1] = a0.y, a[2] = a0.z, a[3] = a0.w, a[4] = a1.x, a[5] = a1.y, a[6] = a1.z, a[7] = a1.w;
    wv[0] = w0.x, wv[1] = w0.y, wv[2] = w0.z, wv[3] = w0.w, wv[4] = w1.x, wv[5] = w1.y, wv[6] = w1.z, wv[7] = w1.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = i < avail ? p[i] : 0.0f, wv[i] = i < avail ? w[i] : 0.0f;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    v[i] = a[i] * wv[i];
    ss = fmaf(a[i], a[i], ss);
  }
}

// Where the result goes: y = x Wᵀ, or residual += x Wᵀ. `conv` (C > 0): y's columns
// [first, first + C) also take the conv step (the in projection's xBC).
struct Out {
  float* y;
  int64_t ldy;
  float* residual;
  int64_t ldr;
  ConvStepArgs conv;
  L2Warm warm;  // warmed while the kernel runs: the next projection's weights
};

constexpr int kSumCols = 16;  // the columns of one mma tile

// What the thread of an element of the output tile needs from memory besides the product, copied
// into shared memory while the product runs (tiles of at most one element a thread), slot s of
// thread i at pre[s·blockDim + i]: the residual (right after the wait), the conv step's taps,
// bias and the sequence's previous inputs (before it, see preload_conv).
constexpr int kPreTaps = 4;  // d_conv of every published model
constexpr int kPreResidual = 0, kPreW = 1, kPreBias = kPreW + kPreTaps, kPreOld = kPreBias + 1;
constexpr int kPreSlots = kPreOld + kPreTaps - 1;

// A row's RMSNorm scale in SelfNormed form: from Σ src² over k columns.
__device__ __forceinline__ float self_scale(float sq, int64_t k, float eps) { return rsqrtf(sq / float(k) + eps); }

// Whether the conv step of column col comes from the preloaded slots.
__device__ __forceinline__ bool conv_preloaded(const ConvStepArgs& cv, int64_t col) {
  const int64_t c = col - cv.first;
  return c >= 0 && c < cv.C && cv.K <= kPreTaps;
}

// Stores results v(row, c) for rows row0 .. row0+rows, columns col0 + c (c < cols): `vals` in
// shared memory as [row][c], times self_scale(rowsq[row]) where rowsq is given. Element i is
// thread i % blockDim's; with `pre` (one element a thread at most, its copies complete) its
// residual and conv inputs come from there.
__device__ void store_block(const Out& out, const float* vals, const float* rowsq, int64_t k, float eps, int64_t row0,
                            int rows, int64_t m, int64_t col0, int cols, int64_t n, const float* pre) {
  const int S = int(blockDim.x);
  for (int i = threadIdx.x; i < rows * cols; i += S) {
    const int64_t r = row0 + i / cols, col = col0 + i % cols;
    if (r >= m || col >= n) continue;
    float v = vals[i];
    if (rowsq) v *= self_scale(rowsq[i / cols], k, eps);
    if (out.residual) {
      out.residual[r * out.ldr + col] = v + (pre ? pre[kPreResidual * S + i] : out.residual[r * out.ldr + col]);
      continue;
    }
    out.y[r * out.ldy + col] = v;
    const ConvStepArgs& cv = out.conv;
    const int64_t c = col - cv.first;
    if (c < 0 || c >= cv.C) continue;
    float* state = cv.states + cv.slots[r] * (cv.K - 1) * cv.C;
    if (pre && conv_preloaded(cv, col)) {
      float w[kPreTaps], old[kPreTaps - 1];
#pragma unroll
      for (int j = 0; j < kPreTaps; ++j) w[j] = pre[(kPreW + j) * S + i];
#pragma unroll
      for (int j = 0; j < kPreTaps - 1; ++j) old[j] = pre[(kPreOld + j) * S + i];
      cv.out[r * cv.ldo + c] = conv_step_regs(v, w, pre[kPreBias * S + i], old, state, cv.C, c, int(cv.K));
    } else {
      cv.out[r * cv.ldo + c] = conv_step_channel(v, cv.w + c * cv.K, cv.bias[c], state, cv.C, c, int(cv.K));
    }
  }
}

// Before the wait, for the thread's element (row r, column col) of a tile of at most one element a
// thread: copies of the conv step's taps and bias, and of the sequence's last K-1 inputs. Reading
// the states before the wait is safe: within a decode step only this projection touches its
// layer's conv states, and a step begins with the copies of its ids and slots, which wait for all
// earlier work on the stream (the slots likewise are written only by those copies).
__device__ void preload_conv(const ConvStepArgs& cv, int64_t r, int64_t col, float* pre) {
  if (!conv_preloaded(cv, col)) return;
  const int S = int(blockDim.x), i = int(threadIdx.x), K = int(cv.K);
  const int64_t c = col - cv.first;
  const float* state = cv.states + cv.slots[r] * (cv.K - 1) * cv.C;
  for (int j = 0; j < K; ++j) cp_async4(pre + (kPreW + j) * S + i, cv.w + c * cv.K + j, 4);
  for (int j = 0; j < K - 1; ++j) cp_async4(pre + (kPreOld + j) * S + i, state + j * cv.C + c, 4);
  cp_async4(pre + kPreBias * S + i, cv.bias + c, 4);
}

// Before the wait: the conv states the block's epilogue will read, into the L2 (the slots are
// written only by copies from the host, complete before the step's first kernel starts).
__device__ void warm_conv_states(const ConvStepArgs& cv, int64_t row0, int rows, int64_t m, int64_t col0, int cols) {
  if (cv.C == 0 || cv.K < 2) return;
  const int64_t c0 = max(col0 - cv.first, int64_t(0)), c1 = min(col0 + cols - cv.first, cv.C);
  if (c0 >= c1) return;
  const int64_t taps = cv.K - 1;
  for (int64_t i = threadIdx.x; i < rows * taps; i += blockDim.x) {
    const int64_t r = row0 + i / taps;
    if (r >= m) break;
    const float* p = cv.states + (cv.slots[r] * taps + i % taps) * cv.C;
    prefetch_l2(p + c0);
    prefetch_l2(p + c1 - 1);
  }
}

// f32 decode on CUDA cores: warp w of a block takes output columns col0 + 2w, col0 + 2w + 1;
// each lane sums its 8-element slices of k in order, then a fixed shuffle tree; kRows rows of x
// per pass share W's slices in registers. SelfNormed: every warp loads whole rows of x, so each
// finds the rows' Σ src² itself (lane slices in order, the same tree).
constexpr int kWarps = 8;
constexpr int kCols = kSumCols / kWarps;
constexpr int kRows = 4;

template <class In, bool vec>
__global__ void __launch_bounds__(kWarps * 32) rows_kernel(In in, const float* W, Out out, int64_t m, int64_t n,
                                                           int64_t k) {
  constexpr bool self_normed = std::is_same_v<In, SelfNormed>;
  __shared__ float scales[kRows * kMaxNormGroups], vals[kRows * kSumCols];
  TRACE_KERNEL;
  start_next();
  warm_l2(out.warm);
  wait_for_previous();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col0 = int64_t(blockIdx.x) * kSumCols, wcol = col0 + warp * kCols;
  for (int64_t r0 = 0; r0 < m; r0 += kRows) {
    if constexpr (std::is_same_v<In, Normed>) {
      row_scales(in, r0, kRows, m, kWarps, scales);
      __syncthreads();
    }
    float acc[kCols][kRows] = {}, ss[kRows] = {};
    for (int64_t kk = int64_t(lane) * 8; kk < k && wcol < n; kk += 256) {
      float xv[kRows][8];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int64_t avail = r0 + r < m ? k - kk : 0;
        if constexpr (self_normed) load_x<float, vec>(in, r0 + r, kk, avail, xv[r], ss[r]);
        else load_x<float, vec>(in, r0 + r, kk, avail, scales + r * kMaxNormGroups, xv[r]);
      }
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        float wv[8];
        load_x<float, vec>(Raw{W, k}, wcol + c, kk, wcol + c < n ? k - kk : 0, nullptr, wv);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[c][r] = fmaf(wv[i], xv[r][i], acc[c][r]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if constexpr (self_normed) ss[r] = warp_sum(ss[r]);
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        float v = warp_sum(acc[c][r]);
        if constexpr (self_normed) v *= self_scale(ss[r], k, in.eps);
        if (lane == 0) vals[r * kSumCols + warp * kCols + c] = v;
      }
    }
    __syncthreads();
    store_block(out, vals, nullptr, k, 0.0f, r0, kRows, m, col0, kSumCols, n, nullptr);
    __syncthreads();
  }
}

// A barrier over the cluster's blocks (none before sm_90: one block a cluster there).
__device__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#endif
}
// The cluster's first block adds the other blocks' vals to its own, in rank order.
__device__ void add_cluster_sums(float* vals, int count, int splits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  auto cluster = cooperative_groups::this_cluster();
  cluster.sync();
  if (cluster.block_rank() != 0) return;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    float v = vals[i];
    for (int b = 1; b < splits; ++b) v += cluster.map_shared_rank(vals, b)[i];
    vals[i] = v;
  }
  __syncthreads();
#endif
}

// f32 decode of a W of few columns (n ≤ kSkinnyMaxCols: Mamba-1's x_proj, 80 columns at 130m, 192
// at 2.8b). The rows kernel gives such a W n/16 blocks (5 on 132 SMs), and its warps wait on memory
// ~k/256 times a step. Here a cluster of `splits` blocks per (8 columns, kSkinnyRows rows of x), a
// warp per column; k in pieces of 128 (a float4 a lane), `per` consecutive pieces to each block of
// the cluster, so that a W of 24 column blocks (2.8b) still has ~200 blocks streaming it. Every
// lane issues all its loads of up to kSkinnyChunks pieces, W's before the wait for the previous
// kernel (weights are never written during inference; the next kernel may start once this one is
// past that wait), and uses W's for each of the block's rows.
// Lane l sums k = 128j + 4l + i (j, then i, in order), then a fixed butterfly, then the cluster's
// blocks in rank order. `splits` and `per` follow (n, k) and the GPU alone, and a row's sum is the
// same in whichever block it is: each output's order is the same whatever m is.
constexpr int kSkinnyCols = 8, kSkinnyChunks = 8, kSkinnyRows = 4, kSkinnyMaxCols = 256;

__global__ void __launch_bounds__(kSkinnyCols * 32) skinny_kernel(Raw in, const float* W, Out out, int64_t m,
                                                                  int64_t n, int64_t k, int splits, int64_t per,
                                                                  bool vec) {
  __shared__ float vals[kSkinnyRows * kSkinnyCols];
  TRACE_KERNEL;
  warm_l2(out.warm);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int split = int(blockIdx.x % unsigned(splits));
  const int64_t col0 = int64_t(blockIdx.x / unsigned(splits)) * kSkinnyCols, col = col0 + warp;
  const int64_t row0 = int64_t(blockIdx.y) * kSkinnyRows;
  const int64_t kb = min(k, split * per * 128), ke = min(k, kb + per * 128);
  const float* w = W + (col < n ? col : 0) * k;
  constexpr int64_t kPass = 128 * kSkinnyChunks;
  float4 wv[kSkinnyChunks];
#pragma unroll
  for (int j = 0; j < kSkinnyChunks; ++j) wv[j] = load_f32x4(w, kb + 128 * j + 4 * lane, ke, vec);
  wait_for_previous();
  start_next();
  float acc[kSkinnyRows] = {};
  for (int64_t k0 = kb; k0 < ke; k0 += kPass) {
    if (k0 > kb) {
#pragma unroll
      for (int j = 0; j < kSkinnyChunks; ++j) wv[j] = load_f32x4(w, k0 + 128 * j + 4 * lane, ke, vec);
    }
#pragma unroll
    for (int i = 0; i < kSkinnyRows; ++i) {
      if (row0 + i >= m) break;
      const float* x = static_cast<const float*>(in.x) + (row0 + i) * in.ld;
      float4 xv[kSkinnyChunks];
#pragma unroll
      for (int j = 0; j < kSkinnyChunks; ++j) xv[j] = load_f32x4(x, k0 + 128 * j + 4 * lane, ke, vec);
#pragma unroll
      for (int j = 0; j < kSkinnyChunks; ++j) {
        acc[i] = fmaf(wv[j].x, xv[j].x, acc[i]);
        acc[i] = fmaf(wv[j].y, xv[j].y, acc[i]);
        acc[i] = fmaf(wv[j].z, xv[j].z, acc[i]);
        acc[i] = fmaf(wv[j].w, xv[j].w, acc[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kSkinnyRows; ++i) {
    acc[i] = warp_sum(acc[i]);
    if (lane == 0) vals[i * kSkinnyCols + warp] = acc[i];
  }
  __syncthreads();
  if (splits > 1) add_cluster_sums(vals, kSkinnyRows * kSkinnyCols, splits);
  if (split == 0) store_block(out, vals, nullptr, k, 0.0f, row0, kSkinnyRows, m, col0, kSkinnyCols, n, nullptr);
  if (splits > 1) cluster_sync();  // the other blocks' vals stay until the first has read them
}

// The skinny kernel's blocks per column block (a cluster) and pieces of 128 per block, from (n, k)
// and the GPU alone: doubled up to 8 while the grid stays within two blocks an SM and each block
// keeps four or more pieces (the 2.8b's x_proj: 8 blocks of 5 pieces; the 130m's: 2 of 6, where 4
// of 3 ran its decode step slower; clusters need sm_90: older GPUs take one block for all of k).
int skinny_splits(int64_t n, int64_t k, int64_t& per) {
  const int64_t pieces = ceil_div(k, int64_t(128)), col_blocks = ceil_div(n, int64_t(kSkinnyCols));
  int splits = 1;
  if (compute_major() >= 9)
    while (splits < 8 && col_blocks * splits * 2 <= 2 * int64_t(sm_count()) && pieces >= 8 * int64_t(splits)) splits *= 2;
  per = ceil_div(pieces, int64_t(splits));
  return int(ceil_div(pieces, per));
}

// bf16/f16 decode on tensor cores: a cluster of `splits` blocks per MT·16 output columns (MT mma
// tiles of 16 rows of W), x's rows as mma's N in tiles of 8, NT tiles per pass. k goes in steps
// of 32, cut into `splits` contiguous ranges, one per block of the cluster (more blocks in flight
// when W has few columns: the 130m out_proj has 48 tiles for 132 SMs); in its range warp w takes
// steps w, w+8, ... The 8 warps' partial sums are added in warp order, then the blocks' in rank
// order by the cluster's first block, through distributed shared memory (sm_90). Lane (g, t) = (l/4,
// l%4) loads 16 bytes at k0 + 8t of W's rows g and g+8 of each tile and of x's row g of each row
// tile: the first four elements are the first mma's k = 2t, 2t+1, 2t+8, 2t+9, the last four the
// second's. Permuting k alike on both operands leaves each dot product as it is. An output's sum
// runs over the same steps, mma by mma and warp by warp, whatever MT, NT and the other rows and
// columns are (an mma's outputs are independent dot products), so the variant can follow m and
// a row's bits still do not depend on its batch (`splits` follows W's shape and the GPU alone).
// Launched overlapped: the first steps' W loads are issued before waiting for the previous kernel,
// and the next kernel may start once this one is past that wait (common.cuh).
constexpr int kTcWarps = 8;

template <int MT, int NT>
__host__ __device__ constexpr bool tc_one_each() {  // at most one output element a thread: inputs preloaded
  return NT * 8 * MT * 16 <= kTcWarps * 32;
}
template <int MT, int NT>
constexpr size_t tc_smem_bytes() {
  return sizeof(float) * (size_t(kTcWarps) * MT * NT * 128 + NT * 8 * kMaxNormGroups + NT * 8 * MT * 16 + NT * 8 +
                          (tc_one_each<MT, NT>() ? kPreSlots * kTcWarps * 32 : 0));
}

// W's 8 elements at p as raw 16-bit values; zeros past `avail` (`vec`: avail ≥ 8 or ≤ 0).
template <bool vec>
__device__ __forceinline__ uint4 load8_raw(const uint16_t* p, int64_t avail) {
  if (avail <= 0) return make_uint4(0, 0, 0, 0);
  if constexpr (vec) {
    return *reinterpret_cast<const uint4*>(p);
  } else {
    uint16_t e[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) e[i] = i < avail ? p[i] : uint16_t(0);
    return make_uint4(e[0] | uint32_t(e[1]) << 16, e[2] | uint32_t(e[3]) << 16, e[4] | uint32_t(e[5]) << 16,
                      e[6] | uint32_t(e[7]) << 16);
  }
}

// A few rows (NT = 1): 3 blocks an SM, so that ptxas keeps these variants at 80 registers.
// SelfNormed: lane (g, t)'s Σ src² of row g, over its steps in order, goes to the t = 0 lane
// (xor 1, then 2), then the warps' are added in order (and the cluster's blocks in rank order,
// with the sums), so every block of a row finds the same scale.
template <class T, int MT, int NT, int U, class In, bool vec>
__global__ void __launch_bounds__(kTcWarps * 32, NT == 1 ? 3 : 1)
    tc_rows_kernel(In in, const uint16_t* W, Out out, int64_t m, int64_t n, int64_t k, int splits) {
  constexpr bool self_normed = std::is_same_v<In, SelfNormed>;
  constexpr bool one_each = tc_one_each<MT, NT>();
  extern __shared__ float smem[];
  float* partial = smem;                                  // [warp][MT][NT][lane][4]
  float* scales = partial + kTcWarps * MT * NT * 128;     // [row][group]; SelfNormed: [warp][row] Σ src²
  float* vals = scales + NT * 8 * kMaxNormGroups;         // [row][MT·16 columns]
  float* rowsq = vals + NT * 8 * MT * 16;                 // [row] Σ src² (SelfNormed), right after vals
  float* pre = rowsq + NT * 8;                            // [slot][thread] (one_each)
  TRACE_KERNEL;
  warm_l2(out.warm);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // A cluster's blocks are consecutive along x, ranked in that order.
  const int split = int(blockIdx.x % unsigned(splits));
  const int64_t col0 = int64_t(blockIdx.x / unsigned(splits)) * MT * 16, steps = ceil_div(k, int64_t(32));
  const int64_t row0 = int64_t(blockIdx.y) * NT * 8;
  const int64_t per = ceil_div(steps, int64_t(splits)), first = split * per, last = min(steps, first + per);
  const int64_t kend = min(k, last * 32);
  // W's rows past n and k past the block's range read as zeros (avail ≤ 0): every lane runs
  // every mma.
  auto load_batch = [&](int64_t s0, uint4 (&lo)[U][MT], uint4 (&hi)[U][MT]) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int64_t kk = (s0 + int64_t(u) * kTcWarps) * 32 + t * 8, r = col0 + 16 * mt + g;
        lo[u][mt] = load8_raw<vec>(W + r * k + kk, r < n ? kend - kk : 0);
        hi[u][mt] = load8_raw<vec>(W + (r + 8) * k + kk, r + 8 < n ? kend - kk : 0);
      }
  };
  uint4 lo[U][MT], hi[U][MT];
  load_batch(first + warp, lo, hi);
  // The thread's output element (one_each), and after the W loads are in flight what it needs
  // of the conv step.
  const int64_t my_r = row0 + threadIdx.x / (MT * 16), my_col = col0 + threadIdx.x % (MT * 16);
  const bool mine = one_each && split == 0 && threadIdx.x < NT * 8 * MT * 16 && my_r < m && my_col < n;
  if (mine && out.conv.C) preload_conv(out.conv, my_r, my_col, pre);
  if (!one_each && split == 0) warm_conv_states(out.conv, row0, NT * 8, m, col0, MT * 16);
  wait_for_previous();
  start_next();
  if (mine && out.residual) cp_async4(pre + kPreResidual * kTcWarps * 32 + threadIdx.x, out.residual + my_r * out.ldr + my_col, 4);
  {
    if constexpr (std::is_same_v<In, Normed>) {
      row_scales(in, row0, NT * 8, m, kTcWarps, scales);
      __syncthreads();
    }
    float acc[MT][NT][4] = {}, ss[NT] = {};
    for (int64_t s0 = first + warp; s0 < last; s0 += kTcWarps * U) {
      if (s0 != first + warp) load_batch(s0, lo, hi);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t step = s0 + int64_t(u) * kTcWarps, kk = step * 32 + t * 8;
        if (step >= last) break;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const int64_t r = row0 + 8 * j + g, avail = r < m ? kend - kk : 0;
          float v[8];
          if constexpr (self_normed) load_x<T, vec>(in, r, kk, avail, v, ss[j]);
          else load_x<T, vec>(in, r, kk, avail, scales + (8 * j + g) * kMaxNormGroups, v);
          const uint32_t b0 = pack2<T>(v[0], v[1]), b1 = pack2<T>(v[2], v[3]);
          const uint32_t b2 = pack2<T>(v[4], v[5]), b3 = pack2<T>(v[6], v[7]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const uint32_t a1[4] = {lo[u][mt].x, hi[u][mt].x, lo[u][mt].y, hi[u][mt].y};
            const uint32_t a2[4] = {lo[u][mt].z, hi[u][mt].z, lo[u][mt].w, hi[u][mt].w};
            mma<T>(acc[mt][j], a1, b0, b1);
            mma<T>(acc[mt][j], a2, b2, b3);
          }
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) partial[(((warp * MT + mt) * NT + j) * 32 + lane) * 4 + e] = acc[mt][j][e];
    if constexpr (self_normed) {
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        ss[j] += __shfl_xor_sync(0xffffffffu, ss[j], 1);
        ss[j] += __shfl_xor_sync(0xffffffffu, ss[j], 2);
        if (t == 0) scales[warp * NT * 8 + 8 * j + g] = ss[j];
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < MT * NT * 128; i += kTcWarps * 32) {
      const int mt = i / (NT * 128), j = i / 128 % NT, l = i / 4 % 32, e = i % 4;
      float v = partial[i];
#pragma unroll
      for (int w = 1; w < kTcWarps; ++w) v += partial[w * MT * NT * 128 + i];
      // Accumulator e of lane l: W row l/4 (+8 for e ≥ 2) of tile mt, x row 2(l%4) + e%2 of tile j.
      const int c = 16 * mt + l / 4 + (e >= 2 ? 8 : 0), r = 8 * j + 2 * (l % 4) + (e & 1);
      vals[r * MT * 16 + c] = v;
    }
    if constexpr (self_normed) {
      if (threadIdx.x < NT * 8) {
        float v = scales[threadIdx.x];
        for (int w = 1; w < kTcWarps; ++w) v += scales[w * NT * 8 + threadIdx.x];
        rowsq[threadIdx.x] = v;
      }
    }
    __syncthreads();
    if (splits > 1) add_cluster_sums(vals, NT * 8 * MT * 16 + (self_normed ? NT * 8 : 0), splits);
    if (split == 0) {
      const float* sq = self_normed ? rowsq : nullptr;
      float eps = 0.0f;
      if constexpr (self_normed) eps = in.eps;
      if (one_each) cp_async_wait_all();
      store_block(out, vals, sq, k, eps, row0, NT * 8, m, col0, MT * 16, n, one_each ? pre : nullptr);
    }
    if (splits > 1) cluster_sync();  // the other blocks' vals stay until the first has read them
  }
}

// How many blocks share each 16 columns of W in the tensor-core decode kernel, from W's shape and
// the GPU alone (never from m): doubled while the grid stays within 2.5 blocks per SM and each
// block keeps 4 or more k-steps of 32 (measured on the H200, bench/RESULTS.md: a split pays only
// where W has few columns and long rows, as the out projections; elsewhere the extra blocks' fixed
// costs and the cluster's exchange outweigh what more loads in flight bring).
// MAMBA2_DECODE_SPLITS=1|2|4|8 forces it (to tune; a row's bits follow it). Clusters need sm_90:
// older GPUs take one block per tile.
int decode_splits(int64_t tiles, int64_t steps) {
  static const int forced = [] {
    const char* e = std::getenv("MAMBA2_DECODE_SPLITS");
    const int v = e ? std::atoi(e) : 0;
    return v == 1 || v == 2 || v == 4 || v == 8 ? v : 0;
  }();
  if (compute_major() < 9) return 1;
  if (forced) return forced;
  int s = 1;
  while (s < 8 && 4 * tiles * s <= 5 * int64_t(sm_count()) && steps >= 8 * int64_t(s)) s *= 2;
  return s;
}

// How many 16-column tiles of W a block takes at a few rows: two when one per block would need
// more than two waves' worth of blocks per SM (the 2.7b in_proj: 661 tiles for 132 SMs, at three
// blocks an SM), which halves the blocks and the second wave's tail; four past eight waves' worth
// (the heads: 3,143 tiles for 130m), where each block's fixed costs (its prologue, the sums'
// exchange through shared memory) add up over the waves. Where k is split over a cluster, one,
// except two at 9–16 rows over a W of a tile an SM or more (the 2.7b out_proj at 16 rows: 22.4 →
// 16.7 µs; the 130m's, 48 tiles, ran its step 2% slower so: bench/RESULTS.md). From W's shape, the
// row count and the GPU. MAMBA2_DECODE_TILES=1|2|4 forces it (to tune; the bits are the same either way).
int decode_tiles_per_block(int64_t tiles, int splits, int64_t m) {
  static const int forced = [] {
    const char* e = std::getenv("MAMBA2_DECODE_TILES");
    const int v = e ? std::atoi(e) : 0;
    return v == 1 || v == 2 || v == 4 ? v : 0;
  }();
  if (forced) return forced;
  const int64_t sms = sm_count();
  if (splits > 1) return m > 8 && m <= 16 && tiles >= sms ? 2 : 1;
  return tiles > 8 * sms ? 4 : tiles > 2 * sms ? 2 : 1;
}

template <class In>
void launch_decode(const In& in, bool in_aligned, const void* W, DType dtype, const Out& out, int64_t m, int64_t n,
                   int64_t k) {
  const uint64_t es = dtype_size(dtype);
  // 16-byte loads need 16-byte aligned rows; the choice depends on the buffers, never on m.
  const bool vec = in_aligned && aligned16(W, k, es) && k % 8 == 0;
  if (dtype == DType::F32) {
    if constexpr (std::is_same_v<In, Raw>) {
      if (n <= kSkinnyMaxCols && m <= 65535 * kSkinnyRows) {
        int64_t per = 0;
        const int splits = skinny_splits(n, k, per);
        const dim3 grid(unsigned(ceil_div(n, int64_t(kSkinnyCols)) * splits), unsigned(ceil_div(m, int64_t(kSkinnyRows))));
        launch_overlapped_clustered(unsigned(splits), skinny_kernel, grid, kSkinnyCols * 32, 0, "linear", in,
                                    static_cast<const float*>(W), out, m, n, k, splits, per, vec);
        return;
      }
    }
    const unsigned blocks = unsigned(ceil_div(n, int64_t(kSumCols)));
    const auto* w = static_cast<const float*>(W);
    if (vec) launch_overlapped(rows_kernel<In, true>, blocks, kWarps * 32, 0, "linear", in, w, out, m, n, k);
    else launch_overlapped(rows_kernel<In, false>, blocks, kWarps * 32, 0, "linear", in, w, out, m, n, k);
    return;
  }
  // More rows share each pass over W, and more columns each load of x, as m grows; the bits are
  // those of any other variant (see tc_rows_kernel).
  const auto* w = static_cast<const uint16_t*>(W);
  const int splits = decode_splits(ceil_div(n, int64_t(16)), ceil_div(k, int64_t(32)));
  auto launch = [&](auto* tag, auto mt, auto nt, auto u) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int MT = decltype(mt)::value, NT = decltype(nt)::value, U = decltype(u)::value;
    constexpr size_t smem = tc_smem_bytes<MT, NT>();
    const int64_t tiles = ceil_div(n, int64_t(MT) * 16);
    const dim3 grid(unsigned(tiles * splits), unsigned(ceil_div(m, int64_t(NT) * 8)));
    auto* kernel = vec ? tc_rows_kernel<T, MT, NT, U, In, true> : tc_rows_kernel<T, MT, NT, U, In, false>;
    if (smem > 48 * 1024)
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), "linear");
    launch_overlapped_clustered(unsigned(splits), kernel, grid, kTcWarps * 32, smem, "linear", in, w, out, m, n, k,
                                splits);
  };
  // A few rows: one 16-column tile per block (two or four for a tall W: decode_tiles_per_block),
  // W streaming once, each warp's loads issued 4 tile-steps of k at a time (10 at a time ran
  // slower in the model's decode on the H200, 2026-11-30), fewer steps for more tiles (the same
  // bytes in flight). Many rows: 64 columns share each load of x, 16 rows per block, blocks over
  // the rows.
  using std::integral_constant;
  using I = integral_constant<int, 1>;
  using Four = integral_constant<int, 4>;
  using Two = integral_constant<int, 2>;
  const int tpb = decode_tiles_per_block(ceil_div(n, int64_t(16)), splits, m);
  auto by_rows = [&](auto* tag) {
    if (m <= 8 && tpb == 4) launch(tag, Four{}, I{}, I{});
    else if (m <= 8 && tpb == 2) launch(tag, Two{}, I{}, Two{});
    else if (m <= 8) launch(tag, I{}, I{}, Four{});
    else if (m <= 16 && tpb > 1) launch(tag, Two{}, Two{}, Two{});
    else if (m <= 16) launch(tag, I{}, Two{}, Four{});
    else launch(tag, Four{}, Two{}, I{});
  };
  if (dtype == DType::BF16) by_rows(static_cast<__nv_bfloat16*>(nullptr));
  else by_rows(static_cast<__half*>(nullptr));
}

}  // namespace

void linear_forward(const void* x, int64_t ldx, const void* W, DType dtype, void* y_out, DType y_dtype, int64_t ldy,
                    int64_t m, int64_t n, int64_t k, bool decode, bool tf32) {
  if (m == 0 || n == 0) return;
  if (y_dtype != DType::F32 && (decode || y_dtype != dtype))
    raise(cat("[linear] y in ", dtype_name(y_dtype), ": the ", decode ? "decode" : dtype_name(dtype),
              " product writes fp32", decode ? "" : cat(" or ", dtype_name(dtype))));
  float* y = static_cast<float*>(y_out);  // the decode kernels' (fp32)
  if (decode && batch_invariant()) {
    launch_decode(Raw{x, ldx}, aligned16(x, ldx, dtype_size(dtype)), W, dtype, Out{y, ldy, nullptr, 0, {}, {}},
                  m, n, k);
    return;
  }
  Blas& bl = blas();
  const uint64_t es = dtype_size(dtype);
  // The model's operands are whole pool buffers with row strides of whole vectors: the alignment
  // (and so the algorithm) is the same for every call of a projection.
  const uint64_t ys = dtype_size(y_dtype);
  const uint32_t align = alignment({uint64_t(reinterpret_cast<uintptr_t>(x)), uint64_t(reinterpret_cast<uintptr_t>(W)),
                                    uint64_t(reinterpret_cast<uintptr_t>(y_out)), uint64_t(ldx) * es, uint64_t(k) * es,
                                    uint64_t(ldy) * ys});
  const Plan* plan;
  {
    std::lock_guard<std::mutex> lock(bl.mutex);
    const int64_t rows = batch_invariant() ? 0 : m;
    auto key = std::make_tuple(n, k, int(dtype), align, rows, tf32, int(y_dtype));
    auto it = bl.plans.find(key);
    if (it == bl.plans.end())
      it = bl.plans.emplace(key, make_plan(bl, dtype, n, k, align, rows, tf32, y_dtype)).first;
    plan = &it->second;
  }
  // A split-K plan's pieces fill the workspace at kPlanRows rows: more rows go in several calls
  // (each row's arithmetic is the same either way).
  const int64_t step = plan->splitk > 1 ? kPlanRows : m;
  for (int64_t r0 = 0; r0 < m; r0 += step) {
    const int64_t rows = std::min(step, m - r0);
    Layouts l(dtype, rows, n, k, ldx, ldy, y_dtype);
    const float one = 1.0f, zero = 0.0f;
    const void* xr = static_cast<const char*>(x) + uint64_t(r0 * ldx) * es;
    void* yr = static_cast<char*>(y_out) + uint64_t(r0 * ldy) * ys;
    const cublasStatus_t st = lt().matmul(bl.handle, plan->desc, &one, W, l.a, xr, l.b, &zero, yr, l.c, yr, l.c,
                                          &plan->algo, workspace(bl), kWorkspaceBytes, stream());
    if (st != CUBLAS_STATUS_SUCCESS)
      raise(cat("[linear] cuBLASLt matmul (", rows, " x ", n, " x ", k, ", ", dtype_name(dtype), ", ",
                decode ? "decode" : "prefill", " plan, ", align, "-byte aligned): status ", int(st)));
  }
}

void linear_decode_residual(const void* x, int64_t ldx, const void* W, DType dtype, float* residual, int64_t ldr,
                            int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  launch_decode(Raw{x, ldx}, aligned16(x, ldx, dtype_size(dtype)), W, dtype, Out{nullptr, 0, residual, ldr, {}, {}}, m,
                n, k);
}

namespace {

// Training's products in column-major terms, A and B in `dtype`, C fp32, fp32 compute (TF32 with tf32):
// C (rows × cols) = op(A) · op(B) + beta·C, `batch` times at the given element strides. The
// algorithm is cuBLASLt's first pick for the shape, asked once; split-K is allowed but not its
// in-place reduction, whose order of the pieces' additions is not fixed, so that the same call
// gives the same bits every time.
struct GemmKey {
  bool ta, tb;
  int64_t rows, cols, inner, lda, ldb, ldc, batch, sa, sb, sc;
  DType dtype;
  uint32_t align_a, align_b, align_c;  // the pointers' alignment in bytes (at most 256)
  bool tf32;
  DType c_dtype;
  auto tie() const {
    return std::tie(ta, tb, rows, cols, inner, lda, ldb, ldc, batch, sa, sb, sc, dtype, align_a, align_b, align_c,
                    tf32, c_dtype);
  }
  bool operator<(const GemmKey& o) const { return tie() < o.tie(); }
};
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

cublasLtMatrixLayout_t gemm_layout(DType dtype, uint64_t rows, uint64_t cols, int64_t ld, int64_t batch,
                                   int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  check_blas(lt().layout_create(&l, cuda_type(dtype), rows, cols, ld), "layout");
  if (batch > 1) {
    const int32_t count = int32_t(batch);
    check_blas(lt().layout_set(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)), "layout");
    check_blas(lt().layout_set(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)),
               "layout");
  }
  return l;
}

const GemmPlan& gemm_plan(const GemmKey& key) {
  static std::map<GemmKey, GemmPlan> plans;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  Blas& bl = blas();
  GemmPlan p;
  check_blas(lt().desc_create(&p.desc, compute_type(key.dtype, key.tf32), CUDA_R_32F), "descriptor");
  const cublasOperation_t ta = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_blas(lt().desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "descriptor");
  check_blas(lt().desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "descriptor");
  // Stored shapes: A is rows × inner (inner × rows when transposed), B inner × cols (cols × inner).
  const uint64_t ar = key.ta ? key.inner : key.rows, ac = key.ta ? key.rows : key.inner;
  const uint64_t br = key.tb ? key.cols : key.inner, bc = key.tb ? key.inner : key.cols;
  p.a = gemm_layout(key.dtype, ar, ac, key.lda, key.batch, key.sa);
  p.b = gemm_layout(key.dtype, br, bc, key.ldb, key.batch, key.sb);
  p.c = gemm_layout(key.c_dtype, uint64_t(key.rows), uint64_t(key.cols), key.ldc, key.batch, key.sc);
  cublasLtMatmulPreference_t pref = nullptr;
  check_blas(lt().preference_create(&pref), "preference");
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                           CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
  check_blas(lt().preference_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
             "preference");
  check_blas(lt().preference_set(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes)),
             "preference");
  // The heuristic assumes 256-byte aligned buffers unless told (column slices and per-head
  // offsets are less aligned).
  using Align = std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t>;
  for (auto [attr, bytes] : {Align{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
                             Align{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
                             Align{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c},
                             Align{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c}})
    check_blas(lt().preference_set(pref, attr, &bytes, sizeof(bytes)), "preference");
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  check_blas(lt().algo_get_heuristic(bl.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found),
             "heuristic");
  lt().preference_destroy(pref);
  if (found == 0)
    raise(cat("[linear] cuBLASLt has no algorithm for the ", dtype_name(key.dtype), " product (", key.rows, " x ",
              key.cols, " x ", key.inner, ", batch ", key.batch, ")"));
  p.algo = result.algo;
  return plans.emplace(key, p).first->second;
}

}  // namespace

void gemm(int64_t m, int64_t n, int64_t k, const GemmOperand& a, const GemmOperand& b, void* c, int64_t ldc,
          int64_t stride_c, int64_t batch, float beta, const char* op, bool tf32, DType c_dtype) {
  if (m == 0 || n == 0 || batch == 0) return;
  if (a.dtype != b.dtype)
    raise(cat("[", op, "] a product of ", dtype_name(a.dtype), " and ", dtype_name(b.dtype), " operands"));
  if (c_dtype != DType::F32 && (c_dtype != a.dtype || beta != 0.0f))
    raise(cat("[", op, "] a ", dtype_name(c_dtype), " result of ", dtype_name(a.dtype),
              " operands: fp32, or the operands' dtype without accumulation"));
  // Row-major C (m × n) is column-major Cᵀ (n × m) = op(B)ᵀ · op(A)ᵀ, and a row-major operand is
  // its transpose column-major: B's storage serves as cuBLASLt's A and A's as its B.
  // Every batch's start: the pointer's alignment and its stride's, in bytes.
  const auto align = [batch](const void* p, int64_t stride, size_t es) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(p) | (batch > 1 ? uintptr_t(stride) * es : 0);
    return uint32_t(v ? std::min<uintptr_t>(v & (~v + 1), 256) : 256);
  };
  const size_t es = dtype_size(a.dtype);
  const GemmKey key{b.t,   a.t,      n,        m,        k,       b.ld,  a.ld,  ldc,
                    batch, b.stride, a.stride, stride_c, a.dtype, align(b.p, b.stride, es),
                    align(a.p, a.stride, es), align(c, stride_c, dtype_size(c_dtype)), tf32 && a.dtype == DType::F32,
                    c_dtype};
  const GemmPlan& p = gemm_plan(key);
  Blas& bl = blas();
  const float one = 1.0f;
  const cublasStatus_t st = lt().matmul(bl.handle, p.desc, &one, b.p, p.a, a.p, p.b, &beta, c, p.c, c, p.c, &p.algo,
                                        workspace(bl), kWorkspaceBytes, stream());
  if (st != CUBLAS_STATUS_SUCCESS)
    raise(cat("[", op, "] cuBLASLt product (", m, " x ", n, " x ", k, ", batch ", batch, "): status ", int(st)));
}

void linear_backward(const void* x, int64_t ldx, const void* W, DType dtype, const void* d_y, DType dy_dtype,
                     int64_t lddy, void* d_x, DType dx_dtype, int64_t lddx, float* d_W, int64_t m, int64_t n,
                     int64_t k, bool tf32, bool add_dx) {
  if (m == 0 || k == 0) return;
  if (n == 0) {
    const size_t es = dtype_size(dx_dtype);
    if (d_x && !add_dx) check(cudaMemset2DAsync(d_x, size_t(lddx) * es, 0, size_t(k) * es, size_t(m), stream()), "linear");
    return;
  }
  // In bf16 / f16 the gradient of y is rounded to the operands' type once (as autocast's products
  // take it); the sums stay fp32.
  std::shared_ptr<void> rounded;
  const void* dy = d_y;
  int64_t ld = lddy;
  if (dy_dtype != dtype) {
    rounded = allocate(size_t(m * n) * dtype_size(dtype), "linear gradient operand");
    cast_rows(static_cast<const float*>(d_y), lddy, rounded.get(), dtype, n, m, n);
    dy = rounded.get(), ld = n;
  }
  // The two products side by side: neither reads what the other writes.
  Overlap weight_beside_input;
  weight_beside_input.side([&] {  // d_yᵀ·x, added
    gemm(n, k, m, {dy, ld, 0, true, dtype}, {x, ldx, 0, false, dtype}, d_W, k, 0, 1, 1.0f, "linear", tf32);
  });
  if (d_x)  // d_y·W
    gemm(m, k, n, {dy, ld, 0, false, dtype}, {W, k, 0, false, dtype}, d_x, lddx, 0, 1, add_dx ? 1.0f : 0.0f, "linear",
         tf32, dx_dtype);
  weight_beside_input.join();
}

void linear_decode_normed(const float* src, int64_t ld, const RowNorm& norm, const void* W, DType dtype, float* y,
                          int64_t ldy, float* residual, int64_t ldr, const ConvStepArgs& conv, const L2Warm& warm,
                          int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  const Out out{y, ldy, residual, ldr, conv, fitting(warm)};
  if (!norm.sums) {
    if (norm.groups != 1) raise(cat("[linear] a norm without partial sums has one group, got ", norm.groups));
    const SelfNormed in{src, ld, norm.weight, norm.eps};
    launch_decode(in, aligned16(src, ld, 4) && reinterpret_cast<uintptr_t>(norm.weight) % 16 == 0, W, dtype, out, m,
                  n, k);
    return;
  }
  if (norm.groups < 1 || norm.groups > kMaxNormGroups || k % norm.groups)
    raise(cat("[linear] a fused norm takes 1 to ", kMaxNormGroups, " groups dividing the ", k, " columns, got ",
              norm.groups));
  const Normed in{src, ld, norm, k / norm.groups};
  const bool aligned = aligned16(src, ld, 4) && reinterpret_cast<uintptr_t>(norm.weight) % 16 == 0 &&
                       in.group_cols % 8 == 0;
  launch_decode(in, aligned, W, dtype, out, m, n, k);
}

namespace {

__global__ void add_bias_kernel(float* __restrict__ y, int64_t ldy, const float* __restrict__ bias, int64_t m,
                                int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= m * n) return;
  y[(e / n) * ldy + e % n] += bias[e % n];
}

// A chunk of kGradRows rows of d_y summed per column in row order, in double.
__global__ void bias_partials_kernel(const float* __restrict__ d_y, int64_t ld, int64_t m, int64_t n,
                                     double* __restrict__ partial) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (c >= n) return;
  const int64_t r0 = chunk * kGradRows, r1 = min(m, r0 + kGradRows);
  double s = 0.0;
  for (int64_t r = r0; r < r1; ++r) s += d_y[r * ld + c];
  partial[chunk * n + c] = s;
}

}  // namespace

void add_bias(float* y, int64_t ldy, const float* bias, int64_t m, int64_t n) {
  if (m * n == 0) return;
  constexpr int kThreads = 256;
  add_bias_kernel<<<unsigned(ceil_div(m * n, kThreads)), kThreads, 0, stream()>>>(y, ldy, bias, m, n);
  check_launch("linear");
}

void bias_backward(const float* d_y, int64_t ld, int64_t m, int64_t n, float* d_b) {
  if (m == 0 || n == 0) return;
  const int64_t chunks = ceil_div(m, kGradRows);
  auto partial = allocate(size_t(chunks * n) * sizeof(double), "bias gradient partial sums");
  constexpr int kThreads = 128;
  bias_partials_kernel<<<dim3(unsigned(ceil_div(n, kThreads)), unsigned(chunks)), kThreads, 0, stream()>>>(
      d_y, ld, m, n, static_cast<double*>(partial.get()));
  check_launch("linear");
  add_column_partials(static_cast<const double*>(partial.get()), n, chunks, n, d_b, "linear");
}

}  // namespace mamba2::cuda
