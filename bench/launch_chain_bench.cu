// What one dependent step of a decode-like chain costs on this GPU, with nothing else in it: a CUDA
// graph of 73 kernels (a 130m decode step's count), each reading a 768-float vector that every block
// of the kernel before it wrote, reducing it in the block and writing its slice — launched plain or
// with programmatic dependent launch (PDL, sm_90) — against the same 73 stages in one persistent
// kernel separated by grid barriers (a release-add and an acquire-spin on a global counter; every
// block must be resident: at most 2 an SM here). Then the host's share of a step: copies in and out
// around a graph launch, pageable and pinned.
//   build/bin/launch_chain_bench        (bench/RESULTS.md, issue 9: a decode step's timeline)
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "cuda/common.cuh"  // the engine's own PDL helpers

namespace {

using mamba2::cuda::start_next;
using mamba2::cuda::wait_for_previous;

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "launch_chain_bench: %s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

constexpr int kD = 768, kThreads = 256, kChain = 73;

// One stage: the block reads all of `in`, sums it, and writes its share of `out`.
__device__ void stage(const float* in, float* out, int block, int blocks) {
  __shared__ float partial[kThreads / 32];
  float s = 0.0f;
  for (int i = threadIdx.x; i < kD; i += kThreads) s += in[i];
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  __syncthreads();
  for (int i = block * kThreads + threadIdx.x; i < kD; i += blocks * kThreads) out[i] = total * 1e-3f + float(i);
}

__global__ void chain_kernel(const float* in, float* out, int work) {
  start_next();
  wait_for_previous();
  if (work) stage(in, out, blockIdx.x, gridDim.x);
}

__device__ unsigned g_arrived;

__global__ void persistent_kernel(float* a, float* b, int stages, unsigned base) {
  unsigned target = base;
  for (int s = 0; s < stages; ++s) {
    stage(s % 2 ? b : a, s % 2 ? a : b, blockIdx.x, gridDim.x);
    __syncthreads();
    target += gridDim.x;
    if (threadIdx.x == 0) {
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(&g_arrived) : "memory");
      unsigned v;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(&g_arrived) : "memory");
      } while (int(v - target) < 0);
    }
    __syncthreads();
  }
}

}  // namespace

int main() {
  cudaStream_t st;
  check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
  float *a, *b;
  check(cudaMalloc(&a, kD * sizeof(float)), "alloc");
  check(cudaMalloc(&b, kD * sizeof(float)), "alloc");
  check(cudaMemset(a, 0, kD * sizeof(float)), "memset");
  check(cudaMemset(b, 0, kD * sizeof(float)), "memset");
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  const int rounds = 20;
  for (int grid : {48, 132, 210, 264})
    for (int pdl = 0; pdl < 2; ++pdl)
      for (int work = 0; work < 2; ++work) {
        cudaGraph_t g;
        cudaGraphExec_t ge;
        check(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture");
        for (int i = 0; i < kChain; ++i) {
          cudaLaunchAttribute attr{};
          attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
          attr.val.programmaticStreamSerializationAllowed = 1;
          cudaLaunchConfig_t cfg{};
          cfg.gridDim = unsigned(grid);
          cfg.blockDim = kThreads;
          cfg.stream = st;
          cfg.attrs = &attr;
          cfg.numAttrs = unsigned(pdl);
          check(cudaLaunchKernelEx(&cfg, chain_kernel, static_cast<const float*>(i % 2 ? b : a), i % 2 ? a : b, work),
                "launch");
        }
        check(cudaStreamEndCapture(st, &g), "capture");
        check(cudaGraphInstantiate(&ge, g, 0), "instantiate");
        for (int w = 0; w < rounds; ++w) check(cudaGraphLaunch(ge, st), "graph");
        check(cudaStreamSynchronize(st), "sync");
        float best = 1e30f;
        for (int r = 0; r < 5; ++r) {
          check(cudaEventRecord(e0, st), "event");
          for (int w = 0; w < rounds; ++w) check(cudaGraphLaunch(ge, st), "graph");
          check(cudaEventRecord(e1, st), "event");
          check(cudaEventSynchronize(e1), "event");
          float ms = 0.0f;
          check(cudaEventElapsedTime(&ms, e0, e1), "event");
          best = std::min(best, ms);
        }
        std::printf("graph of %d kernels, %d blocks, %s launch, %s: %.2f us a kernel\n", kChain, grid,
                    pdl ? "PDL" : "plain", work ? "with the stage's work" : "empty", best * 1e3f / rounds / kChain);
        cudaGraphExecDestroy(ge);
        cudaGraphDestroy(g);
      }
  unsigned base = 0;
  for (int grid : {48, 132, 264}) {
    float best = 1e30f;
    for (int r = 0; r < 6; ++r) {
      check(cudaEventRecord(e0, st), "event");
      persistent_kernel<<<grid, kThreads, 0, st>>>(a, b, kChain, base);
      base += unsigned(grid) * kChain;
      check(cudaEventRecord(e1, st), "event");
      check(cudaEventSynchronize(e1), "event");
      check(cudaGetLastError(), "persistent kernel");
      float ms = 0.0f;
      check(cudaEventElapsedTime(&ms, e0, e1), "event");
      if (r > 0) best = std::min(best, ms);  // the first includes the module's load
    }
    std::printf("persistent kernel, %d blocks, %d grid barriers: %.2f us a stage\n", grid, kChain,
                best * 1e3f / kChain);
  }
  // The host's share of a step around a one-kernel graph.
  cudaGraph_t g;
  cudaGraphExec_t ge;
  check(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture");
  chain_kernel<<<1, 32, 0, st>>>(a, b, 0);
  check(cudaStreamEndCapture(st, &g), "capture");
  check(cudaGraphInstantiate(&ge, g, 0), "instantiate");
  int32_t ids[16] = {};
  int64_t slots[16] = {};
  int32_t* pinned;
  check(cudaMallocHost(&pinned, 256), "pinned");
  char* dev;
  check(cudaMalloc(&dev, 1024), "alloc");
  const char* names[] = {"graph launch + sync", "2 pageable copies in + launch + pageable copy out + sync",
                         "pinned copy in + launch + pinned copy out + sync", "sync of an idle stream"};
  for (int variant = 0; variant < 4; ++variant) {
    double best = 1e30;
    for (int r = 0; r < 5; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 200; ++i) {
        if (variant == 1) {
          check(cudaMemcpyAsync(dev, ids, 4, cudaMemcpyHostToDevice, st), "copy");
          check(cudaMemcpyAsync(dev + 64, slots, 8, cudaMemcpyHostToDevice, st), "copy");
        } else if (variant == 2) {
          check(cudaMemcpyAsync(dev, pinned, 16, cudaMemcpyHostToDevice, st), "copy");
        }
        if (variant < 3) check(cudaGraphLaunch(ge, st), "graph");
        if (variant == 1) check(cudaMemcpyAsync(ids, dev + 128, 4, cudaMemcpyDeviceToHost, st), "copy");
        if (variant == 2) check(cudaMemcpyAsync(pinned + 32, dev + 128, 4, cudaMemcpyDeviceToHost, st), "copy");
        check(cudaStreamSynchronize(st), "sync");
      }
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("host: %s: %.2f us a step\n", names[variant], best * 1e6 / 200);
  }
  return 0;
}
