// The CUDA runtime interface in a build without the CUDA backend: no GPU, and a clear error for
// anything that would need one.
#include "cuda/collectives.h"
#include "cuda/runtime.h"

#include "mamba2/error.h"

namespace mamba2::cuda {

namespace {
[[noreturn]] void no_backend() {
  fail("[cuda] this build has no CUDA backend (configure with nvcc on the PATH and -DMAMBA2_CUDA=ON)");
}
}  // namespace

bool built() { return false; }
int device_count() { return 0; }
std::string no_gpu_reason() { return "this build has no CUDA backend"; }
void select_device(int) { no_backend(); }
int current_device() { no_backend(); }
size_t memory_bytes() { return 0; }
std::string device_description(int) { no_backend(); }
std::shared_ptr<void> allocate(size_t, const char*) { no_backend(); }
void copy_to_device(void*, const void*, size_t) { no_backend(); }
void copy_to_host(void*, const void*, size_t) { no_backend(); }
void copy_on_device(void*, const void*, size_t) { no_backend(); }
void fill_zero(void*, size_t) { no_backend(); }
void synchronize() {}
size_t peak_reserved_bytes() { return 0; }
DeviceRead::DeviceRead(const void*, size_t) { no_backend(); }
DeviceRead::~DeviceRead() = default;
void DeviceRead::into(void*) { no_backend(); }
Graph::Graph(const std::function<void()>&) { no_backend(); }
Graph::~Graph() = default;
void Graph::launch() { no_backend(); }
StepTimer::StepTimer() { no_backend(); }
StepTimer::~StepTimer() = default;
std::vector<std::pair<std::string, double>> StepTimer::totals() { no_backend(); }
void mark(const char*) {}
std::string new_comm_id() { no_backend(); }
Communicator::Communicator(const std::string&, int, int) { no_backend(); }
Communicator::~Communicator() = default;
void Communicator::sum_async(const std::vector<std::pair<float*, size_t>>&, float) { no_backend(); }
void Communicator::join() { no_backend(); }
void Communicator::broadcast_host(void*, size_t, int) { no_backend(); }
void Communicator::broadcast_device(void*, size_t, int) { no_backend(); }
std::vector<double> Communicator::all_gather(double) { no_backend(); }

}  // namespace mamba2::cuda
