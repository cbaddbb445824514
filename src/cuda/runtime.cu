// The CUDA runtime of the engine: device choice, one stream, the stream-ordered memory pool.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>

#include "cuda/common.cuh"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

struct Runtime {
  int device = -1;
  cudaStream_t stream = nullptr;
  cudaStream_t side = nullptr;                         // an Overlap's second stream
  cudaEvent_t forked = nullptr, side_done = nullptr;  // an Overlap's hand-offs
  cudaMemPool_t pool = nullptr;
  uint64_t l2_bytes = 0;
  int major = 0, sms = 0;  // compute capability, SM count
  size_t memory = 0;
};

std::mutex g_mutex;
Runtime g_rt;

// Host-to-device copies go through pinned buffers, so that they are asynchronous and the source
// may go once copy_to_device returns. From pageable memory the driver may copy synchronously or
// wait for the stream, and the callers waited for the stream before freeing the source: a 130m
// training step drained the queue 17 times (bench/RESULTS.md). kStages buffers of kStageBytes
// are used in turn, each again once the copy from it has completed (its event); a larger copy
// goes in pieces. Allocated on first use, kept for the process's life as the stream is.
constexpr int kStages = 16;
constexpr size_t kStageBytes = size_t(1) << 20;
struct Stage {
  char* host = nullptr;
  cudaEvent_t copied = nullptr;
};
std::mutex g_stage_mutex;
Stage g_stages[kStages];
int g_next_stage = 0;

void init_device(int index) {
  check(cudaSetDevice(index), "cuda");
  // Stream and pool live as long as the process: buffers freed during static destruction
  // still find them.
  check(cudaStreamCreateWithFlags(&g_rt.stream, cudaStreamNonBlocking), "cuda");
  check(cudaStreamCreateWithFlags(&g_rt.side, cudaStreamNonBlocking), "cuda");
  check(cudaEventCreateWithFlags(&g_rt.forked, cudaEventDisableTiming), "cuda");
  check(cudaEventCreateWithFlags(&g_rt.side_done, cudaEventDisableTiming), "cuda");
  check(cudaDeviceGetDefaultMemPool(&g_rt.pool, index), "cuda");
  // Keep freed memory in the pool instead of returning it at every synchronisation.
  uint64_t keep = UINT64_MAX;
  check(cudaMemPoolSetAttribute(g_rt.pool, cudaMemPoolAttrReleaseThreshold, &keep), "cuda");
  int l2 = 0;
  check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, index), "cuda");
  g_rt.l2_bytes = uint64_t(l2);
  check(cudaDeviceGetAttribute(&g_rt.major, cudaDevAttrComputeCapabilityMajor, index), "cuda");
  check(cudaDeviceGetAttribute(&g_rt.sms, cudaDevAttrMultiProcessorCount, index), "cuda");
  size_t free_b = 0;
  check(cudaMemGetInfo(&free_b, &g_rt.memory), "cuda");
  g_rt.device = index;
}

Runtime& runtime() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_rt.device < 0) {
    if (device_count() == 0) raise("[cuda] no CUDA GPU: " + no_gpu_reason());
    init_device(0);
  }
  return g_rt;
}

// This thread's Overlap: one is open; its side() is running.
thread_local bool t_in_overlap = false, t_on_side = false;

}  // namespace

cudaStream_t stream() {
  Runtime& rt = runtime();
  return t_on_side ? rt.side : rt.stream;
}
bool on_side_stream() { return t_on_side; }

// The second stream starts from the engine's stream's position (an event, so a graph being captured
// gains the side stream's launches as a branch).
Overlap::Overlap() {
  if (t_in_overlap) raise("[cuda] an Overlap inside another");
  Runtime& rt = runtime();
  check(cudaEventRecord(rt.forked, rt.stream), "cuda overlap");
  check(cudaStreamWaitEvent(rt.side, rt.forked, 0), "cuda overlap");
  t_in_overlap = true;
}

void Overlap::enter_side(bool on) { t_on_side = on; }

void Overlap::join() {
  if (joined_) return;
  joined_ = true;
  t_in_overlap = false;
  Runtime& rt = runtime();
  check(cudaEventRecord(rt.side_done, rt.side), "cuda overlap");
  check(cudaStreamWaitEvent(rt.stream, rt.side_done, 0), "cuda overlap");
}

// Joined even when an op fails between: the scratch freed after it is then still in stream order.
Overlap::~Overlap() {
  try {
    join();
  } catch (...) {  // a broken stream: the error reaches the caller from the op that broke it
  }
}

int compute_major() { return runtime().major; }
int sm_count() { return runtime().sms; }

bool built() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a machine without a driver
    return 0;
  }
  return n;
}

std::string no_gpu_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  cudaGetLastError();
  if (err != cudaSuccess) return cat(cudaGetErrorString(err), " (", cudaGetErrorName(err), ")");
  return n == 0 ? "the driver shows no GPU" : "";
}

void select_device(int index) {
  const int n = device_count();
  if (index < 0 || index >= n)
    raise(cat("[cuda] device ", index, " does not exist: this machine has ", n, " CUDA GPU(s)",
              n == 0 ? " (" + no_gpu_reason() + ")" : ""));
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_rt.device == index) return;
  if (g_rt.device >= 0) raise(cat("[cuda] GPU ", g_rt.device, " is already in use by this process; one GPU per process"));
  init_device(index);
}

int current_device() { return runtime().device; }

size_t memory_bytes() { return runtime().memory; }

L2Warm fitting(L2Warm w) {
  return w.bytes <= runtime().l2_bytes / 4 ? w : L2Warm{};
}

std::string device_description(int index) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, index), "cuda");
  std::ostringstream os;
  os.precision(1);
  os << prop.name << " (sm_" << prop.major << prop.minor << ", " << prop.multiProcessorCount << " SMs, " << std::fixed
     << double(prop.totalGlobalMem) / double(1ull << 30) << " GiB)";
  return os.str();
}

std::shared_ptr<void> allocate(size_t bytes, const char* what) {
  Runtime& rt = runtime();
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMallocAsync(&p, bytes, rt.stream);
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    raise(cat("[cuda] out of GPU memory: ", bytes >> 20, " MiB asked for ", what, " (", free_b >> 20, " MiB free of ",
              total_b >> 20, " MiB; ", cudaGetErrorString(err), ")"));
  }
  cudaStream_t s = rt.stream;
  return std::shared_ptr<void>(p, [s](void* q) { cudaFreeAsync(q, s); });
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  cudaStream_t s = stream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(s, &capture), "cuda copy");
  if (capture != cudaStreamCaptureStatusNone) {  // a graph copies from memory that stays (Graph)
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "cuda copy");
    return;
  }
  std::lock_guard<std::mutex> lock(g_stage_mutex);
  auto* to = static_cast<char*>(dst);
  const auto* from = static_cast<const char*>(src);
  while (bytes) {
    Stage& st = g_stages[g_next_stage];
    g_next_stage = (g_next_stage + 1) % kStages;
    if (!st.host) {
      check(cudaMallocHost(reinterpret_cast<void**>(&st.host), kStageBytes), "cuda copy staging");
      check(cudaEventCreateWithFlags(&st.copied, cudaEventDisableTiming), "cuda copy staging");
    } else {
      check(cudaEventSynchronize(st.copied), "cuda copy");
    }
    const size_t n = std::min(bytes, kStageBytes);
    std::memcpy(st.host, from, n);
    check(cudaMemcpyAsync(to, st.host, n, cudaMemcpyHostToDevice, s), "cuda copy");
    check(cudaEventRecord(st.copied, s), "cuda copy");
    to += n, from += n, bytes -= n;
  }
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()), "cuda copy");
  check(cudaStreamSynchronize(stream()), "cuda copy");
}

DeviceRead::DeviceRead(const void* src, size_t bytes) : src_(src), bytes_(bytes) {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cuda read");
  event_ = e;
  check(cudaEventRecord(e, stream()), "cuda read");
}

DeviceRead::~DeviceRead() {
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void DeviceRead::into(void* dst) {
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)), "cuda read");
  // The legacy default stream: the engine's stream is non-blocking, so this copy waits for nothing
  // launched there after the mark.
  check(cudaMemcpy(dst, src_, bytes_, cudaMemcpyDeviceToHost), "cuda read");
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "cuda copy");
}

void fill_zero(void* dst, size_t bytes) {
  if (bytes) check(cudaMemsetAsync(dst, 0, bytes, stream()), "cuda");
}

void synchronize() {
  if (g_rt.device >= 0) check(cudaStreamSynchronize(g_rt.stream), "cuda");
}

size_t peak_reserved_bytes() {
  if (g_rt.device < 0) return 0;  // no GPU used: none started for the question
  uint64_t v = 0;
  check(cudaMemPoolGetAttribute(g_rt.pool, cudaMemPoolAttrReservedMemHigh, &v), "cuda");
  return size_t(v);
}

Graph::Graph(const std::function<void()>& body) {
  cudaStream_t s = stream();
  check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cuda graph");
  try {
    body();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(s, &broken);
    if (broken) cudaGraphDestroy(broken);
    cudaGetLastError();
    throw;
  }
  cudaGraph_t g = nullptr;
  check(cudaStreamEndCapture(s, &g), "cuda graph");
  graph_ = g;
  cudaGraphExec_t exec = nullptr;
  check(cudaGraphInstantiate(&exec, g, 0), "cuda graph");
  exec_ = exec;
}

Graph::~Graph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void Graph::launch() { check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream()), "cuda graph"); }

namespace {

struct Marks {
  std::vector<std::pair<std::string, cudaEvent_t>> events;  // the start, then one per mark
};
Marks* active_marks = nullptr;  // one timer at a time, on the engine's thread

cudaEvent_t record_event() {
  cudaEvent_t e = nullptr;
  check(cudaEventCreate(&e), "step timer");
  check(cudaEventRecord(e, stream()), "step timer");
  return e;
}

}  // namespace

StepTimer::StepTimer() {
  if (active_marks) raise("[cuda] one step timer at a time");
  active_marks = new Marks;
  active_marks->events.emplace_back("", record_event());
}

StepTimer::~StepTimer() {
  for (auto& [name, e] : active_marks->events) cudaEventDestroy(e);
  delete active_marks;
  active_marks = nullptr;
}

std::vector<std::pair<std::string, double>> StepTimer::totals() {
  check(cudaStreamSynchronize(stream()), "step timer");
  std::vector<std::pair<std::string, double>> out;
  const auto& ev = active_marks->events;
  for (size_t i = 1; i < ev.size(); ++i) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, ev[i - 1].second, ev[i].second), "step timer");
    auto it = std::find_if(out.begin(), out.end(), [&](const auto& p) { return p.first == ev[i].first; });
    if (it == out.end()) out.emplace_back(ev[i].first, double(ms));
    else it->second += double(ms);
  }
  return out;
}

void mark(const char* name) {
  if (active_marks) active_marks->events.emplace_back(name, record_event());
}

}  // namespace mamba2::cuda

#if MAMBA2_CUDA_TRACE
namespace mamba2::cuda {

namespace {

std::vector<void (*)(const TraceBuffer&)>& trace_setters() {
  static std::vector<void (*)(const TraceBuffer&)> setters;
  return setters;
}
TraceBuffer g_buffer{};

}  // namespace

void register_trace_buffer(void (*set)(const TraceBuffer&)) { trace_setters().push_back(set); }

void trace_begin() {
  if (!g_buffer.records) {
    check(cudaMalloc(&g_buffer.records, size_t(kTraceRecords) * 5 * sizeof(unsigned long long)), "trace");
    check(cudaMalloc(&g_buffer.count, sizeof(unsigned)), "trace");
    for (auto set : trace_setters()) set(g_buffer);
  }
  check(cudaMemsetAsync(g_buffer.count, 0, sizeof(unsigned), stream()), "trace");
}

void trace_dump(const char* path) {
  check(cudaStreamSynchronize(stream()), "trace");
  unsigned n = 0;
  check(cudaMemcpy(&n, g_buffer.count, sizeof n, cudaMemcpyDeviceToHost), "trace");
  n = std::min(n, kTraceRecords);
  std::vector<unsigned long long> r(size_t(n) * 5);
  check(cudaMemcpy(r.data(), g_buffer.records, r.size() * sizeof(r[0]), cudaMemcpyDeviceToHost), "trace");
  std::ofstream out(path);
  out << "grid start waited end sm\n";
  for (size_t i = 0; i < r.size(); i += 5)
    out << r[i] << ' ' << r[i + 1] << ' ' << r[i + 2] << ' ' << r[i + 3] << ' ' << r[i + 4] << '\n';
  if (!out) raise(cat("[cuda] cannot write the trace to ", path));
}

}  // namespace mamba2::cuda
#endif
