// What reading a decode step's weights costs on this GPU with nothing else to do: the floor that
// the batch-1 projections (bench/RESULTS.md, issue 9) are measured against. Each kernel streams one
// matrix's bytes (16-byte loads, fully coalesced, U loads a thread in flight, a grid of B blocks
// an SM) and folds them into one word; consecutive launches read different copies, cycled over
// more than the L2 holds, so every byte comes from DRAM. Launched in CUDA graphs with programmatic
// dependent launch, as the engine's decode step is: each kernel's first loads are issued before it
// waits for the kernel before it.
//   1. one matrix size at a time, every grid shape: µs a kernel and TB/s;
//   2. the projections' access pattern (16-row tiles of mma fragments; pattern_kernel) in variants;
//   3. a step's chain at the best shape: the 2.7b (64 × in_proj 10576×2560 + out_proj 2560×5120,
//      then the 50280×2560 head, bf16) and the 130m (24 × 3352×768 + 768×1536, head 50280×768);
//   4. the decode SSD step's fp32 states read and written in place, a kernel a layer.
//   build/bin/weight_stream_bench
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/common.cuh"  // the engine's own PDL helpers

namespace {

using mamba2::cuda::start_next;
using mamba2::cuda::wait_for_previous;

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "weight_stream_bench: %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <int U>
__global__ void __launch_bounds__(256) read_kernel(const uint4* p, int64_t n, unsigned* sink) {
  start_next();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  unsigned acc = 0;
  bool waited = false;
  for (; i + (U - 1) * stride < n; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = load_stream(p + i + u * stride);
    if (!waited) wait_for_previous(), waited = true;
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (!waited) wait_for_previous();
  for (; i < n; i += stride) {
    const uint4 v = load_stream(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;  // never true for the zeroed buffers; keeps the loads
}

// The decode SSD step's state stream without its arithmetic: every 16 bytes read and written back
// in place (plus one to each word, so that the store is not elided), U loads in flight a thread.
template <int U>
__global__ void __launch_bounds__(256) update_kernel(uint4* p, int64_t n) {
  start_next();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  wait_for_previous();
  for (; i + (U - 1) * stride < n; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = p[i + u * stride];
#pragma unroll
    for (int u = 0; u < U; ++u) p[i + u * stride] = make_uint4(v[u].x + 1, v[u].y + 1, v[u].z + 1, v[u].w + 1);
  }
  for (; i < n; i += stride) {
    const uint4 v = p[i];
    p[i] = make_uint4(v.x + 1, v.y + 1, v.z + 1, v.w + 1);
  }
}

__device__ __forceinline__ uint4 load_cached(const uint4* p) {  // a plain load: allocated in the L1
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// The decode projection's access pattern without its arithmetic: W (n rows of k bf16, rows 2k
// bytes apart) as work items of 16 rows × C columns, in tile-major order (16 rows, then k), block
// b taking an equal contiguous share of them, warp w of it items w, w + 8, ... U at a time.
//   kRows16:  C = 32: lane (g, t) reads 16 bytes of rows g and g + 8 at columns 8t.. (the kernel's)
//   kRows32:  C = 64: lane (g, t) reads 32 bytes (two loads) of rows g and g + 8 at columns 16t..,
//             so that the two loads of a row's 4 lanes cover whole 128-byte lines between them
//   kTiled:   C = 32, W stored item by item (1 KB each): lane l reads bytes 16l.. and 512 + 16l..
// `cached`: plain loads (allocated in the L1) instead of streaming ones.
enum Pattern { kRows16, kRows32, kTiled };
template <int U, Pattern P, bool cached>
__global__ void __launch_bounds__(256) pattern_kernel(const char* W, int64_t n, int64_t k, unsigned* sink) {
  start_next();
  constexpr int C = P == kRows32 ? 64 : 32, L = P == kRows32 ? 4 : 2;
  const int64_t steps = k / C, items = n / 16 * steps, ld = 2 * k;
  const int64_t begin = items * blockIdx.x / gridDim.x, end = items * (blockIdx.x + 1) / gridDim.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const auto load = [](const char* p) {
    return cached ? load_cached(reinterpret_cast<const uint4*>(p)) : load_stream(reinterpret_cast<const uint4*>(p));
  };
  unsigned acc = 0;
  bool waited = false;
  for (int64_t i0 = begin + warp; i0 < end; i0 += 8 * U) {
    uint4 v[U][L];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = min(i0 + 8 * u, end - 1), tile = i / steps, step = i % steps;
      if constexpr (P == kTiled) {
        const char* p = W + i * 1024 + lane * 16;
        v[u][0] = load(p), v[u][1] = load(p + 512);
      } else if constexpr (P == kRows16) {
        const char* p = W + (tile * 16 + g) * ld + (step * 32 + t * 8) * 2;
        v[u][0] = load(p), v[u][1] = load(p + 8 * ld);
      } else {
        const char* p = W + (tile * 16 + g) * ld + (step * 64 + t * 16) * 2;
        v[u][0] = load(p), v[u][1] = load(p + 16), v[u][2] = load(p + 8 * ld), v[u][3] = load(p + 8 * ld + 16);
      }
    }
    if (!waited) wait_for_previous(), waited = true;
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int j = 0; j < L; ++j) acc ^= v[u][j].x ^ v[u][j].w;
  }
  if (!waited) wait_for_previous();
  if (acc == 0x9e3779b9u) *sink = acc;
}

struct Shape {
  int per_sm, unroll;
};

// A launch with programmatic dependent launch allowed, as the engine's decode kernels are.
template <class... Params, class... Args>
void launch_pdl(void (*kernel)(Params...), int blocks, cudaStream_t st, Args... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = unsigned(blocks);
  cfg.blockDim = 256;
  cfg.stream = st;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  check(cudaLaunchKernelEx(&cfg, kernel, args...), "launch");
}

void launch_read(const Shape& s, int sms, const void* p, int64_t bytes, unsigned* sink, cudaStream_t st) {
  const auto* q = static_cast<const uint4*>(p);
  const int64_t n = bytes / 16;
  if (s.unroll == 4) launch_pdl(read_kernel<4>, s.per_sm * sms, st, q, n, sink);
  else if (s.unroll == 8) launch_pdl(read_kernel<8>, s.per_sm * sms, st, q, n, sink);
  else launch_pdl(read_kernel<16>, s.per_sm * sms, st, q, n, sink);
}

// Copies of `bytes` each, cycled: offsets into one allocation of at least `total` bytes.
struct Pool {
  char* base = nullptr;
  int64_t size = 0;
  int64_t next = 0;
  void* take(int64_t bytes) {
    if (next + bytes > size) next = 0;
    void* p = base + next;
    next += (bytes + 4095) / 4096 * 4096;
    return p;
  }
};

// The launches `capture` issues, as one graph: the best of 5 timings of `reps` replays, in ms a replay.
template <class F>
double time_graph(F&& capture, cudaStream_t st, int reps) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  check(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture");
  capture();
  check(cudaStreamEndCapture(st, &g), "capture");
  check(cudaGraphInstantiate(&ge, g, 0), "instantiate");
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  check(cudaGraphLaunch(ge, st), "graph");
  check(cudaStreamSynchronize(st), "sync");
  float best = 1e30f;
  for (int r = 0; r < 5; ++r) {
    check(cudaEventRecord(e0, st), "event");
    for (int i = 0; i < reps; ++i) check(cudaGraphLaunch(ge, st), "graph");
    check(cudaEventRecord(e1, st), "event");
    check(cudaEventSynchronize(e1), "event");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, e0, e1), "event");
    best = std::min(best, ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  return double(best) / reps;
}

// A graph of read_kernel launches, one per entry of `chain` (its bytes), in ms.
double time_chain(const std::vector<int64_t>& chain, const Shape& s, int sms, Pool& pool, unsigned* sink,
                  cudaStream_t st, int reps) {
  return time_graph([&] { for (int64_t bytes : chain) launch_read(s, sms, pool.take(bytes), bytes, sink, st); }, st,
                    reps);
}

// 32 launches of pattern_kernel over W of n × k with `blocks` blocks, in ms a launch.
template <int U, Pattern P, bool cached>
double time_pattern(int64_t n, int64_t k, int blocks, Pool& pool, unsigned* sink, cudaStream_t st) {
  constexpr int kChain = 32;
  return time_graph(
             [&] {
               for (int i = 0; i < kChain; ++i)
                 launch_pdl(pattern_kernel<U, P, cached>, blocks, st, static_cast<const char*>(pool.take(n * k * 2)),
                            n, k, sink);
             },
             st, 4) /
         kChain;
}

}  // namespace

int main() {
  int dev = 0, sms = 0, l2 = 0;
  check(cudaGetDevice(&dev), "device");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "attribute");
  check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "attribute");
  cudaStream_t st;
  check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
  Pool pool;
  pool.size = int64_t(2) << 30;  // 2 GiB: many times the L2, and room for a 2.7b step's 5.4 GB in turn
  check(cudaMalloc(&pool.base, size_t(pool.size)), "alloc");
  check(cudaMemset(pool.base, 0, size_t(pool.size)), "memset");
  unsigned* sink;
  check(cudaMalloc(&sink, 4), "alloc");
  std::printf("%d SMs, L2 %d MB\n", sms, l2 >> 20);

  const int64_t in27 = 10576LL * 2560 * 2, out27 = 2560LL * 5120 * 2, head27 = 50280LL * 2560 * 2;
  const int64_t in130 = 3352LL * 768 * 2, out130 = 768LL * 1536 * 2, head130 = 50280LL * 768 * 2;
  const struct {
    const char* name;
    int64_t bytes;
  } sizes[] = {{"2.7b in_proj", in27}, {"2.7b out_proj", out27}, {"2.7b head", head27},
               {"130m in_proj", in130}, {"130m out_proj", out130}, {"130m head", head130}};
  std::vector<Shape> shapes;
  for (int per_sm : {1, 2, 4, 8})
    for (int unroll : {4, 8, 16}) shapes.push_back({per_sm, unroll});

  Shape best_shape{4, 8};
  for (const auto& sz : sizes) {
    double best = 1e30;
    Shape arg{};
    std::printf("%-14s %6.1f MB:", sz.name, sz.bytes / 1e6);
    for (const Shape& s : shapes) {
      const std::vector<int64_t> chain(32, sz.bytes);
      const double ms = time_chain(chain, s, sms, pool, sink, st, 4) / 32;
      std::printf(" %d/%d %.1f", s.per_sm, s.unroll, ms * 1e3);
      if (ms < best) best = ms, arg = s;
    }
    std::printf("  (blocks an SM / loads in flight: µs)\n  best %d/%d: %.2f µs, %.2f TB/s\n", arg.per_sm, arg.unroll,
                best * 1e3, sz.bytes / best / 1e9);
    if (sz.bytes == in27) best_shape = arg;
  }

  // The projections' access pattern: row-major W as the decode kernel reads it, and item by item.
  const struct {
    const char* name;
    int64_t n, k;
    int ours;  // the decode kernel's block count at batch 1
  } mats[] = {{"2.7b in_proj", 10576, 2560, 331}, {"2.7b out_proj", 2560, 5120, 320},
              {"130m in_proj", 3352, 768, 210}, {"130m out_proj", 768, 1536, 192}};
  for (const auto& mt : mats) {
    const int64_t n = mt.n / 16 * 16;
    std::printf("%s pattern, µs, at %d / %d blocks:\n", mt.name, mt.ours, 3 * sms);
    const auto row = [&](const char* name, auto f) {
      std::printf("  %-34s %6.2f %6.2f\n", name, f(mt.ours) * 1e3, f(3 * sms) * 1e3);
    };
    row("rows of 16 B, streaming, U 4", [&](int b) { return time_pattern<4, kRows16, false>(n, mt.k, b, pool, sink, st); });
    row("rows of 16 B, streaming, U 2", [&](int b) { return time_pattern<2, kRows16, false>(n, mt.k, b, pool, sink, st); });
    row("rows of 16 B, cached, U 4", [&](int b) { return time_pattern<4, kRows16, true>(n, mt.k, b, pool, sink, st); });
    row("rows of 32 B, streaming, U 2", [&](int b) { return time_pattern<2, kRows32, false>(n, mt.k, b, pool, sink, st); });
    row("rows of 32 B, cached, U 2", [&](int b) { return time_pattern<2, kRows32, true>(n, mt.k, b, pool, sink, st); });
    row("rows of 32 B, cached, U 1", [&](int b) { return time_pattern<1, kRows32, true>(n, mt.k, b, pool, sink, st); });
    row("tiled, streaming, U 2", [&](int b) { return time_pattern<2, kTiled, false>(n, mt.k, b, pool, sink, st); });
    row("tiled, streaming, U 4", [&](int b) { return time_pattern<4, kTiled, false>(n, mt.k, b, pool, sink, st); });
  }

  const struct {
    const char* name;
    int layers;
    int64_t in, out, head;
  } models[] = {{"2.7b", 64, in27, out27, head27}, {"130m", 24, in130, out130, head130}};
  for (const auto& m : models) {
    std::vector<int64_t> chain;
    int64_t total = 0;
    for (int l = 0; l < m.layers; ++l) chain.push_back(m.in), chain.push_back(m.out);
    chain.push_back(m.head);
    for (int64_t b : chain) total += b;
    for (const Shape& s : {best_shape, Shape{2, 8}, Shape{4, 8}, Shape{8, 4}}) {
      const double ms = time_chain(chain, s, sms, pool, sink, st, 3);
      std::printf("%s step: %zu kernels, %.1f MB of weights, shape %d/%d: %.3f ms (%.2f TB/s)\n", m.name,
                  chain.size(), total / 1e6, s.per_sm, s.unroll, ms, total / ms / 1e9);
    }
  }

  // 4. The SSD step's fp32 states, read and written in place by one kernel a layer (each layer its
  // own slots): 130m (24 heads × 64 × 128 a sequence) at batches 1, 16, 64; 2.7b (80 heads) at 1, 16.
  const struct {
    const char* name;
    int layers, batch;
    int64_t bytes;  // a layer's states
  } states[] = {{"130m", 24, 1, 24LL * 64 * 128 * 4},       {"130m", 24, 16, 16LL * 24 * 64 * 128 * 4},
                {"130m", 24, 64, 64LL * 24 * 64 * 128 * 4}, {"2.7b", 64, 1, 80LL * 64 * 128 * 4},
                {"2.7b", 64, 16, 16LL * 80 * 64 * 128 * 4}};
  for (const auto& sv : states)
    for (const Shape& s : {Shape{4, 4}, Shape{8, 4}, Shape{8, 2}}) {
      const double ms = time_graph(
          [&] {
            for (int l = 0; l < sv.layers; ++l) {
              auto* p = static_cast<uint4*>(pool.take(sv.bytes));
              if (s.unroll == 4) launch_pdl(update_kernel<4>, s.per_sm * sms, st, p, sv.bytes / 16);
              else launch_pdl(update_kernel<2>, s.per_sm * sms, st, p, sv.bytes / 16);
            }
          },
          st, 3);
      const double moved = 2.0 * double(sv.bytes) * sv.layers;
      std::printf("%s batch %d states: %d kernels of %.1f MB read and written, shape %d/%d: %.1f µs a layer "
                  "(%.2f TB/s read + write)\n",
                  sv.name, sv.batch, sv.layers, sv.bytes / 1e6, s.per_sm, s.unroll, ms * 1e3 / sv.layers,
                  moved / ms / 1e9);
    }
  return 0;
}
