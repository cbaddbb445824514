// The special-function unit's ceiling on this GPU, and what it puts under the Mamba-1 selective
// scan's forward (issue 11's goal rows). Every exp, sine, cosine and reciprocal of the scan runs on
// the SFU (MUFU.EX2 / SIN / COS / RCP), whose throughput is a sixteenth of the FP32 pipe's on sm_80
// … sm_90 by NVIDIA's tables. This measures it — independent ex2.approx / sin.approx / cos.approx
// chains over a full grid — and divides the scan's SFU operations by it:
//   per (token, channel, state): one ex2 (the decay exp(δA)); complex: ex2, sin and cos;
//   per (token, channel): softplus's ex2 (its log1p is a polynomial on the FMA pipe) in every pass
//   that stages δ, and silu's ex2 + rcp where y is gated;
//   segments (src/cuda/selective_scan.cu): every segment but a sequence's last is run twice, once
//   from zero by summary_kernel (decays and softplus, no gate) and once by scan_kernel.
//   build/bin/sfu_ceiling        (bench/RESULTS.md, issue 11: the forward's floor)
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "sfu_ceiling: %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

constexpr int kChains = 8, kIters = 4096, kThreads = 256;
constexpr float kNever = 12345.0f;  // sfu_kernel's `never`: no chain's sum comes near it

// kChains independent chains a thread, each op feeding the next of its chain (ex2 of a value ≤ 0
// stays in (0, 1]; sin and cos of values in [−1, 1] stay there): the SFU is the only busy pipe
// beside the FMULs of sin and cos (their range scaling and the 0.999 that keeps the chains from
// being folded); ex2's negation folds into its operand. The sums are compared with a value the
// compiler cannot see (never met): against a constant, ptxas proved the ex2 chains' sum ≤ 0 and
// dropped the whole ex2 loop.
template <int Op>
__global__ void sfu_kernel(float* out, float seed, float never) {
  float v[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) v[c] = seed * float(threadIdx.x % 7 + c + 1) * -1e-3f;
  for (int i = 0; i < kIters; ++i) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) {
      float r;
      if constexpr (Op == 0)
        asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v[c]));
      else if constexpr (Op == 1)
        asm volatile("sin.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v[c]));
      else
        asm volatile("cos.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v[c]));
      v[c] = Op == 0 ? -r : r * 0.999f;
    }
  }
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += v[c];
  if (s == never) out[0] = s;  // keeps the chains live
}

// SFU operations a second of kernel Op, the best of five launches.
template <int Op>
double rate(int sms) {
  const int blocks = sms * 8;  // 2048 threads an SM: every scheduler has warps to spare
  float* out = nullptr;
  check(cudaMalloc(&out, sizeof(float)), "cudaMalloc");
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  sfu_kernel<Op><<<blocks, kThreads>>>(out, 1.0f, kNever);  // warm-up
  check(cudaDeviceSynchronize(), "warm-up");
  float best = 1e30f;
  for (int r = 0; r < 5; ++r) {
    check(cudaEventRecord(a), "record");
    sfu_kernel<Op><<<blocks, kThreads>>>(out, 1.0f, kNever);
    check(cudaEventRecord(b), "record");
    check(cudaEventSynchronize(b), "sync");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, a, b), "elapsed");
    if (ms < best) best = ms;
  }
  check(cudaEventDestroy(a), "event");
  check(cudaEventDestroy(b), "event");
  check(cudaFree(out), "cudaFree");
  return double(blocks) * kThreads * kChains * kIters / (best * 1e-3);
}

// The forward's SFU operations at b sequences of L tokens, D channels, N states, segments of S
// tokens (S ≥ L: none): ex2 (rcp counted with them: the same unit's rate) and sin + cos.
struct Ops {
  double ex2, trig;
};
Ops scan_sfu_ops(double b, double D, double L, double N, double S, bool complex) {
  const double segs = S >= L ? 1.0 : double(int64_t((L + S - 1) / S));
  const double scan = b * L * D, summary = b * (segs - 1.0) * S * D;  // (token, channel) pairs
  const double ex2 = scan * (N + 1.0 + 2.0) + summary * (N + 1.0);  // decays; softplus; silu's ex2 + rcp
  return {ex2, complex ? 2.0 * N * (scan + summary) : 0.0};
}

}  // namespace

int main() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, dev), "properties");
  const int sms = prop.multiProcessorCount;
  int khz = 0;
  check(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev), "clock rate");
  const double ex2 = rate<0>(sms), sin = rate<1>(sms), cos = rate<2>(sms);
  // NVIDIA's table: 16 SFU operations a clock an SM (sm_80 … sm_90), at the highest clock.
  const double table = sms * 16.0 * khz * 1e3;
  std::printf("%s, %d SMs, %.2f GHz: the table's 16 a clock an SM is %.3g /s\n", prop.name, sms, khz * 1e-6, table);
  std::printf("SFU: ex2 %.3g /s, sin %.3g /s, cos %.3g /s\n", ex2, sin, cos);
  for (const double r : {ex2, sin, cos})
    if (r > 1.1 * table) {  // a chain the compiler removed times an empty kernel
      std::fprintf(stderr, "sfu_ceiling: a rate above the table's peak: the timed loop was not run as written\n");
      return 1;
    }
  const double trig = 2.0 / (1.0 / sin + 1.0 / cos);  // a sin and a cos in turn
  struct Row {
    const char* name;
    bool complex;
    double segment;
  } rows[] = {{"real, segments of 256", false, 256}, {"real, no segments", false, 1e18},
              {"complex, segments of 256", true, 256}, {"complex, no segments", true, 1e18}};
  std::printf("selective scan forward b8 D1536 L2048 N16: SFU floor\n");
  for (const Row& r : rows) {
    const Ops o = scan_sfu_ops(8, 1536, 2048, 16, r.segment, r.complex);
    std::printf("  %-26s %.3g ex2 + %.3g sin/cos: %.1f us\n", r.name, o.ex2, o.trig,
                (o.ex2 / ex2 + o.trig / trig) * 1e6);
  }
  return 0;
}
