// Shared by the CUDA kernel files: the engine's stream, error checks that name the op, and
// element loads/stores of the storage dtypes (compute is fp32 inside every kernel).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "core/dtype.h"
#include "cuda/kernels.h"

namespace mamba2::cuda {

// Every launch and copy of the engine goes to this stream (one per process and device), except
// inside an Overlap's side(), where it is the engine's second stream.
cudaStream_t stream();
bool on_side_stream();  // inside an Overlap's side()
// Two chains of launches of one op with no data between them, run side by side: the launches made
// inside side(body) go to the engine's second stream, after everything launched before the
// Overlap was made; join() (or the destructor) makes the engine's stream wait for them. Each
// kernel's arithmetic is its own, so the bits do not change. Scratch memory comes from the engine's
// stream (allocate) before the Overlap and is freed after the join. One Overlap at a time.
class Overlap {
 public:
  Overlap();
  ~Overlap();
  Overlap(const Overlap&) = delete;
  Overlap& operator=(const Overlap&) = delete;
  template <class F>
  void side(F&& body) {
    struct Guard {
      Guard() { enter_side(true); }
      ~Guard() { enter_side(false); }
    } guard;
    body();
  }
  void join();

 private:
  static void enter_side(bool on);
  bool joined_ = false;
};
// The device's compute capability (major) and SM count.
int compute_major();
int sm_count();
// w, or nothing when it is over a quarter of the GPU's L2: warming part of a large projection
// competes with the running kernel's own weight stream and is evicted by it before use (2.7b
// decode ran 36% slower with half the L2 warmed, bench/RESULTS.md).
L2Warm fitting(L2Warm w);

// Throws mamba2::Error (raise.cpp: nvcc cannot compile fmt's compile-time format checks, so the
// .cu files build their messages with cat() and never include mamba2/error.h).
[[noreturn]] void raise(const std::string& message);
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

inline void check(cudaError_t err, const char* op) {
  if (err != cudaSuccess) raise(cat("[", op, "] CUDA error: ", cudaGetErrorString(err), " (", cudaGetErrorName(err), ")"));
}
// After a launch: a bad configuration shows here; faults inside the kernel show at the next sync.
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Whether rows from p, ld elements of es bytes apart, all start on 16 bytes (16-byte loads).
__host__ __device__ inline bool aligned16(const void* p, int64_t ld, size_t es) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (uint64_t(ld) * es) % 16 == 0;
}

__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load_f32(const __half* p) { return __half2float(*p); }
// Two adjacent values; p on 2 elements' alignment.
__device__ __forceinline__ float2 load_f32x2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load_f32x2(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ float2 load_f32x2(const __half* p) { return __half22float2(*reinterpret_cast<const __half2*>(p)); }
__device__ __forceinline__ void store_f32(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_f32(__half* p, float v) { *p = __float2half_rn(v); }
// Element i of a buffer whose dtype is known at run time only (F32, BF16 or F16), rounded once.
__device__ __forceinline__ void store_f32(void* p, DType dtype, int64_t i, float v) {
  if (dtype == DType::BF16) store_f32(static_cast<__nv_bfloat16*>(p) + i, v);
  else if (dtype == DType::F16) store_f32(static_cast<__half*>(p) + i, v);
  else static_cast<float*>(p)[i] = v;
}
// Two adjacent values, each rounded as store_f32 would; p on 2 elements' alignment.
__device__ __forceinline__ void store_f32x2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = {a, b}; }
__device__ __forceinline__ void store_f32x2(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void store_f32x2(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}

// The activations' exps and divisions by the SFU: exact libm forms (expf's range reduction,
// log1pf's, IEEE division) were ~45 instructions a softplus and ~30 a silu, a sixth of the
// selective scan's instructions (SASS, 2026-12-04). Each value below is within a few 1e-7 relative
// of the exact one, far inside the 1e-5 the kernels are held to against the CPU.

// 2^v by the SFU (ex2.approx.ftz: relative error ~2⁻²², results below 2⁻¹²⁶ flushed to 0): the
// scans' decay factors.
__device__ __forceinline__ float exp2_approx(float v) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
// 1/v by the SFU (rcp.approx.ftz: ≤ 1 ulp); v here is in [1, 2].
__device__ __forceinline__ float rcp_approx(float v) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
constexpr float kLog2e = 1.4426950408889634f;  // log2 e, for exps by the SFU's 2^x
// e^v for v ≤ 0 (never overflows): 2^(v·log2 e); the product's rounding adds |v|·2⁻²⁴ relative.
__device__ __forceinline__ float exp_nonpos(float v) { return exp2_approx(v * kLog2e); }
// log(1 + w) for w ∈ [0, 1]: w·Q(w), Q the degree-8 minimax fit of log1p(w)/w on [0, 1] (relative
// error 3e-8; 2e-7 evaluated in fp32), scripts/fit_log1p.py.
__device__ __forceinline__ float log1p_unit(float w) {
  float q = 5.232695490e-03f;
  q = fmaf(q, w, -2.950524352e-02f);
  q = fmaf(q, w, 7.822595537e-02f);
  q = fmaf(q, w, -1.366324574e-01f);
  q = fmaf(q, w, 1.910600662e-01f);
  q = fmaf(q, w, -2.484298199e-01f);
  q = fmaf(q, w, 3.331909776e-01f);
  q = fmaf(q, w, -4.999949336e-01f);
  q = fmaf(q, w, 9.999999404e-01f);
  return w * q;
}
// sigmoid(v) through e = exp(-|v|) ∈ (0, 1], as the CPU kernels: never overflows.
__device__ __forceinline__ float sigmoid(float v) {
  const float e = exp_nonpos(-fabsf(v));
  const float r = rcp_approx(1.0f + e);
  return v >= 0.0f ? r : e * r;
}
__device__ __forceinline__ float silu(float v) { return v * sigmoid(v); }

// silu(v) and d silu(v) / dv = s·(1 + v·(1 − s)), s = sigmoid(v), as cpu::silu_grad, from one
// sigmoid (f the same value as silu).
__device__ __forceinline__ void silu_with_grad(float v, float& f, float& df) {
  const float s = sigmoid(v);
  f = v * s;
  df = s * (1.0f + v * (1.0f - s));
}
__device__ __forceinline__ float silu_grad(float v) {
  float f, df;
  silu_with_grad(v, f, df);
  return df;
}

// softplus (torch's threshold 20): max(v, 0) + log(1 + e^−|v|), the same function as log1p(e^v).
__device__ __forceinline__ float softplus(float v) {
  return v > 20.0f ? v : fmaxf(v, 0.0f) + log1p_unit(exp_nonpos(-fabsf(v)));
}

// softplus and the dt_limit clamp, as cpu::dt_activation.
__device__ __forceinline__ float dt_activation(float raw, float bias, float lo, float hi) {
  const float sp = softplus(raw + bias);
  return sp < lo ? lo : (hi < sp ? hi : sp);
}

// softplus' derivative at v = raw + bias (torch's threshold 20).
__device__ __forceinline__ float softplus_grad(float v) { return v > 20.0f ? 1.0f : sigmoid(v); }

// dt_activation's derivative with respect to raw, as cpu::dt_activation_grad: 0 where the clamp binds.
__device__ __forceinline__ float dt_activation_grad(float raw, float bias, float lo, float hi) {
  const float v = raw + bias, sp = softplus(v);
  if (sp < lo || sp > hi) return 0.0f;
  return softplus_grad(v);
}

// The parameter gradients' sums over rows (tokens), deterministic without atomics: a kernel
// leaves the sums of fixed chunks of kGradRows rows, each in row order, in double as
// partial[chunk·ld + c]; add_column_partials adds the chunks in 8 contiguous parts, each in order,
// then the parts in order, and the total, once rounded, to grad[c] (+=). The chunks and parts
// follow the row count alone: the same run, the same bits.
constexpr int64_t kGradRows = 64;
void add_column_partials(const double* partial, int64_t ld, int64_t chunks, int64_t cols, float* grad,
                         const char* op);
// The same for several gradients whose columns lie side by side in the partials' rows (an op's
// parameters: one launch instead of one each, a 130m training step 72 fewer).
struct ColumnParts {
  static constexpr int kMax = 4;
  int count = 0;
  int64_t cols[kMax] = {};
  float* grad[kMax] = {};
};
void add_column_partials(const double* partial, int64_t ld, int64_t chunks, const ColumnParts& parts, const char* op);
// Σ of n doubles on the GPU, copied to the host (a wait) and added there in index order.
double host_sum(const double* values, int64_t n);

// Row-major products for training (linear.cu): C_i = op(A_i) · op(B_i) + beta·C_i for i < batch,
// C (m × n) fp32 (or, with beta 0, c_dtype: the operands' dtype, rounded once), op(A) (m × k),
// op(B) (k × n) both F32, BF16 or F16 (the same), each operand `stride` elements after the one
// before; fp32 compute (true fp32 for F32 unless `tf32`: TF32 tensor cores) through cuBLASLt, the
// same bits every call.
struct GemmOperand {
  const void* p;
  int64_t ld, stride;
  bool t;  // transposed: stored (k × m) for A, (n × k) for B
  DType dtype = DType::F32;
};
void gemm(int64_t m, int64_t n, int64_t k, const GemmOperand& a, const GemmOperand& b, void* c, int64_t ldc,
          int64_t stride_c, int64_t batch, float beta, const char* op, bool tf32 = false, DType c_dtype = DType::F32);

// Programmatic dependent launch (sm_90), for the decode step's chain of small kernels: a kernel
// launched with launch_overlapped may start while the kernel before it in the stream runs — it
// may read weights (never written during inference) but must call wait_for_previous() before it
// reads anything else or writes anything. Each such kernel lets its successor start (start_next())
// at once, or — the decode projections and the Mamba-1 scan step — once past its own wait, so that
// one kernel at a time, not a chain of them, waits ahead holding SMs (the 130m Mamba-1 step 0.427 →
// 0.37 ms, the 2.8b's 2.60 → 2.53; H200, 2026-12-04); the successor's blocks then wait at
// wait_for_previous() for this grid to complete, with their weight loads already in flight. Both
// are no-ops on older GPUs and for kernels launched the ordinary way.
#if MAMBA2_CUDA_TRACE
// The trace build (-DMAMBA2_CUDA_TRACE=ON; the decode step dumps it to $MAMBA2_TRACE_FILE, read by
// bench/decode_timeline.py): a kernel that opens with TRACE_KERNEL records, per block, the global
// timer when it starts, when it passes wait_for_previous() and when its last thread is done, with
// its grid's id and its SM, into a buffer the runtime hands every .cu file (trace_begin).
struct TraceBuffer {
  unsigned long long* records;  // 5 words a block
  unsigned* count;
};
__device__ TraceBuffer g_trace;  // one per .cu file: set by register_trace_buffer's setters
void register_trace_buffer(void (*set)(const TraceBuffer&));
namespace {
const bool trace_registered = (register_trace_buffer([](const TraceBuffer& b) {
                                 cudaMemcpyToSymbol(g_trace, &b, sizeof b);
                               }),
                               true);
}  // namespace
constexpr unsigned kTraceRecords = 1u << 20;
__device__ __forceinline__ unsigned long long global_timer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned long long* trace_slots() {  // start, waited, end, threads done
  __shared__ unsigned long long slots[4];
  return slots;
}
struct TraceKernel {
  __device__ TraceKernel() {
    if (threadIdx.x + threadIdx.y + threadIdx.z == 0) {
      unsigned long long* s = trace_slots();
      s[0] = global_timer(), s[1] = 0, s[2] = 0, s[3] = 0;
    }
    __syncthreads();
  }
  __device__ ~TraceKernel() {
    unsigned long long* s = trace_slots();
    atomicMax(&s[2], global_timer());
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    if (atomicAdd(&s[3], 1ull) + 1 != threads || !g_trace.records) return;
    const unsigned i = atomicAdd(g_trace.count, 1u);
    if (i >= kTraceRecords) return;
    unsigned long long grid;
    unsigned sm;
    asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    unsigned long long* r = g_trace.records + 5ull * i;
    r[0] = grid, r[1] = s[0], r[2] = s[1], r[3] = atomicMax(&s[2], 0ull), r[4] = sm;
  }
};
#define TRACE_KERNEL const TraceKernel trace_kernel_
#else
#define TRACE_KERNEL static_cast<void>(0)
#endif

__device__ __forceinline__ void wait_for_previous() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#if MAMBA2_CUDA_TRACE
  if (threadIdx.x + threadIdx.y + threadIdx.z == 0) trace_slots()[1] = global_timer();
#endif
}
__device__ __forceinline__ void start_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// Warms the L2 with bytes [ptr, ptr + bytes): each block of the grid issues one bulk prefetch of
// its share (sm_90; a hint that nothing waits for, and that no result depends on). A decode
// step's kernels warm the weights of the projection after them while they run, so that its loads
// hit the L2 instead of waiting on DRAM (L2Warm: cuda/kernels.h).
__device__ __forceinline__ void warm_l2(const L2Warm& w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (!w.ptr || threadIdx.x + threadIdx.y + threadIdx.z != 0) return;
  // Whole 16-byte units around the range, as the instruction needs.
  const uint64_t first = reinterpret_cast<uint64_t>(w.ptr) & ~uint64_t(15);
  const uint64_t total = (reinterpret_cast<uint64_t>(w.ptr) + w.bytes + 15 - first) & ~uint64_t(15);
  const uint64_t blocks = uint64_t(gridDim.x) * gridDim.y * gridDim.z;
  const uint64_t b = (uint64_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const uint64_t share = (total / 16 + blocks - 1) / blocks * 16, start = b * share;
  if (start >= total) return;
  const uint32_t size = uint32_t(min(share, total - start));
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(first + start), "r"(size) : "memory");
#endif
}
// p[i .. i+4) as a float4, zeros from `end` on; `vec`: p + i is 16-byte aligned whenever
// i + 4 ≤ end (one 16-byte load), else element by element.
__device__ __forceinline__ float4 load_f32x4(const float* p, int64_t i, int64_t end, bool vec) {
  if (vec && i + 4 <= end) return *reinterpret_cast<const float4*>(p + i);
  float v[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) v[e] = i + e < end ? p[i + e] : 0.0f;
  return make_float4(v[0], v[1], v[2], v[3]);
}
// One 128-byte line into the L2 (a hint: a load after wait_for_previous() reads the current
// value whatever was prefetched).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Asynchronous copies into shared memory (sm_80+): `bytes` of the 16 (or 4) read from src, the rest
// zero-filled; complete for the issuing thread after cp_async_wait_all().
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(unsigned(__cvta_generic_to_shared(dst))),
               "l"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(unsigned(__cvta_generic_to_shared(dst))),
               "l"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// All but the last committed group.
__device__ __forceinline__ void cp_async_wait_all_but_last() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

// `cluster` > 1 (sm_90): the grid's blocks in clusters of that many along x, which may read each
// other's shared memory (the decode projections' split-k sums).
template <class... Params, class... Args>
void launch_overlapped_clustered(unsigned cluster, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                 const char* op, Args&&... args) {
  cudaLaunchAttribute attrs[2]{};
  attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[0].val.programmaticStreamSerializationAllowed = 1;
  attrs[1].id = cudaLaunchAttributeClusterDimension;
  attrs[1].val.clusterDim.x = cluster;
  attrs[1].val.clusterDim.y = 1;
  attrs[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream();
  cfg.attrs = attrs;
  cfg.numAttrs = cluster > 1 ? 2 : 1;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), op);
}
template <class... Params, class... Args>
void launch_overlapped(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, const char* op,
                       Args&&... args) {
  launch_overlapped_clustered(1, kernel, grid, block, smem, op, std::forward<Args>(args)...);
}

// Σ over a warp's 32 lanes of v, by a fixed butterfly (the same order every time); every lane
// gets the result.
template <class V>
__device__ __forceinline__ V warp_sum(V v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Σ over a block of kThreads of v (float or double): warp_sum, then the warps in order, the same
// order every time; every thread gets the result.
template <int kThreads, class V = float>
__device__ V block_sum(V v) {
  __shared__ V partial[kThreads / 32];
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  V total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  __syncthreads();  // partial may be reused by the next call
  return total;
}

// block_sum of a and of b, the same bits, with one pair of barriers for both.
template <int kThreads>
__device__ void block_sum2(float& a, float& b) {
  __shared__ float partial[2][kThreads / 32];
  a = warp_sum(a), b = warp_sum(b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[0][warp] = a, partial[1][warp] = b;
  __syncthreads();
  float ta = 0.0f, tb = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) ta += partial[0][w], tb += partial[1][w];
  __syncthreads();
  a = ta, b = tb;
}

// Calls f with a null pointer of the storage type of `dtype` (to pick a template instance); a
// dtype the kernels do not take (the weight formats q8, q4) is an error of the op `op`.
template <class F>
void with_dtype(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::F32: f(static_cast<float*>(nullptr)); return;
    case DType::BF16: f(static_cast<__nv_bfloat16*>(nullptr)); return;
    case DType::F16: f(static_cast<__half*>(nullptr)); return;
    default: break;
  }
  raise(cat("[", op, "] ", dtype_name(dtype), ": the CUDA kernels take F32, BF16 or F16"));
}

// A tensor in F32 or in `Other`'s dtype (mixed-precision paths keep activations narrow): f with `p`
// typed as that, const kept. `other` names that dtype's role in the message ("the output's dtype").
template <class Other, class V, class F>
void with_f32_or(V* p, DType dtype, const char* op, const char* what, const char* other, F&& f) {
  constexpr bool ro = std::is_const_v<V>;
  if (dtype == DType::F32) return f(static_cast<std::conditional_t<ro, const float, float>*>(p));
  const DType want = std::is_same_v<Other, float> ? DType::F32 : std::is_same_v<Other, __half> ? DType::F16 : DType::BF16;
  if (dtype != want)
    raise(cat("[", op, "] ", what, " is ", dtype_name(dtype), ", expected F32 or ", dtype_name(want), " (", other, ")"));
  if constexpr (!std::is_same_v<Other, float>) f(static_cast<std::conditional_t<ro, const Other, Other>*>(p));
}

}  // namespace mamba2::cuda
