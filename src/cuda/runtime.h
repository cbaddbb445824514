// The CUDA runtime as the rest of the engine sees it: plain C++, no CUDA headers, so that CPU code
// can include it. Built from runtime.cu when the CUDA backend is compiled; without it
// (runtime_none.cpp) device_count() is 0 and everything else fails with a clear message.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mamba2::cuda {

bool built();              // this binary has the CUDA backend
int device_count();        // GPUs the driver shows; 0 without a driver, a GPU or the backend
std::string no_gpu_reason();  // why device_count() is 0 ("" when it is not)
// Makes GPU `index` the one every later call uses (fails naming the index and the count).
void select_device(int index);
int current_device();
size_t memory_bytes();  // the memory of the engine's GPU (0 without the backend)
// "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)". Selects nothing: a data-parallel worker describes
// GPU 0 in its version line before it selects its own GPU.
std::string device_description(int index);

// Device memory from a stream-ordered caching pool (cudaMallocAsync on the engine's stream):
// freeing returns it to the pool in stream order, so a buffer freed right after the launches
// that use it is safe. Fails with "[cuda] out of GPU memory ... for <what>".
std::shared_ptr<void> allocate(size_t bytes, const char* what);
// Copies on the engine's stream; copy_to_host waits for the data. copy_to_device returns without
// waiting, and `src` may be freed or changed as soon as it does (it is staged in pinned memory).
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void fill_zero(void* dst, size_t bytes);
void synchronize();
// Device memory read back later without waiting for the whole stream: made, it marks the stream;
// into(dst) waits only for the launches made before the mark, then copies `bytes` from `src`
// (which nothing launched after the mark may change).
class DeviceRead {
 public:
  DeviceRead(const void* src, size_t bytes);
  ~DeviceRead();
  DeviceRead(const DeviceRead&) = delete;
  DeviceRead& operator=(const DeviceRead&) = delete;
  void into(void* dst);

 private:
  [[maybe_unused]] const void* src_;
  [[maybe_unused]] size_t bytes_;
  [[maybe_unused]] void* event_ = nullptr;  // cudaEvent_t
};
// The pool's high-water mark of memory reserved from the GPU (0 when no GPU has been used).
size_t peak_reserved_bytes();

// The launches `body` makes on the engine's stream, captured once and replayed as one graph: one
// launch instead of one per kernel (a decode step is ~150 small kernels). `body` must not
// synchronise, copy from pageable host memory or allocate new memory.
class Graph {
 public:
  explicit Graph(const std::function<void()>& body);
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void launch();

 private:
  // Null (and unused) without the CUDA backend.
  [[maybe_unused]] void* graph_ = nullptr;  // cudaGraph_t
  [[maybe_unused]] void* exec_ = nullptr;   // cudaGraphExec_t
};

// Where the time of a stretch of launches goes: while a StepTimer lives, mark(name) records an
// event on the engine's stream, and the time from the previous mark (or the timer's start) is
// added to `name`. Outside one, mark does nothing, so the model can mark its decode step always;
// the marks break the overlap of launches, so time eager steps with it, not graphs.
class StepTimer {
 public:
  StepTimer();
  ~StepTimer();
  StepTimer(const StepTimer&) = delete;
  StepTimer& operator=(const StepTimer&) = delete;
  // Waits for the stream; the milliseconds per name, in the order first marked.
  std::vector<std::pair<std::string, double>> totals();
};
void mark(const char* name);

#if MAMBA2_CUDA_TRACE
// The trace build (-DMAMBA2_CUDA_TRACE=ON): trace_begin() empties the kernels' trace buffer;
// trace_dump(path) waits for the stream and writes what they recorded since, a line a block:
// grid id, start, passed its wait, end (global timer, ns; 0: no wait), SM.
void trace_begin();
void trace_dump(const char* path);
#endif

}  // namespace mamba2::cuda
