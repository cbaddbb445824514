// NCCL through dlopen: the functions are looked up in libnccl.so.2 once, when the first id or
// communicator is made.
#include <nccl.h>

#include <cstdlib>
#include <cstring>

#include "core/dynamic_library.h"
#include "cuda/collectives.h"
#include "cuda/common.cuh"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

struct Nccl {
  decltype(&ncclGetUniqueId) get_unique_id;
  decltype(&ncclCommInitRank) comm_init_rank;
  decltype(&ncclCommDestroy) comm_destroy;
  decltype(&ncclCommAbort) comm_abort;
  decltype(&ncclAllReduce) all_reduce;
  decltype(&ncclBroadcast) broadcast;
  decltype(&ncclAllGather) all_gather;
  decltype(&ncclGroupStart) group_start;
  decltype(&ncclGroupEnd) group_end;
  decltype(&ncclRedOpCreatePreMulSum) premul_sum_create;
  decltype(&ncclRedOpDestroy) red_op_destroy;
  decltype(&ncclGetErrorString) error_string;
};

const Nccl& nccl() {
  static Nccl n;
  static const std::string error = [] {  // bound once (a thread-safe static); a failure is kept
    // Multicast objects on a shared host can put its GPUs out of service (KINDS.md of the test
    // machines; the issue asks it off), so it stays off whatever the environment says.
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    std::string why;
    void* lib = open_library({"libnccl.so.2"}, why);
    if (!lib)
      return cat("[nccl] cannot load libnccl.so.2 (", why,
                 "): training on several GPUs needs NCCL 2.12 or newer on the library path (LD_LIBRARY_PATH), "
                 "e.g. Debian's libnccl2 or pip's nvidia-nccl-cu13");
    std::string missing;
    auto sym = [&](auto& fn, const char* name) {
      if (!bind_symbol(lib, fn, name) && missing.empty())
        missing = cat("[nccl] libnccl.so.2 has no ", name, " (NCCL 2.12 or newer is needed)");
    };
    sym(n.get_unique_id, "ncclGetUniqueId");
    sym(n.comm_init_rank, "ncclCommInitRank");
    sym(n.comm_destroy, "ncclCommDestroy");
    sym(n.comm_abort, "ncclCommAbort");
    sym(n.all_reduce, "ncclAllReduce");
    sym(n.broadcast, "ncclBroadcast");
    sym(n.all_gather, "ncclAllGather");
    sym(n.group_start, "ncclGroupStart");
    sym(n.group_end, "ncclGroupEnd");
    sym(n.premul_sum_create, "ncclRedOpCreatePreMulSum");
    sym(n.red_op_destroy, "ncclRedOpDestroy");
    sym(n.error_string, "ncclGetErrorString");
    return missing;
  }();
  if (!error.empty()) raise(error);
  return n;
}

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess && r != ncclInProgress) raise(cat("[nccl] ", what, ": ", nccl().error_string(r)));
}

ncclComm_t as_comm(void* p) { return static_cast<ncclComm_t>(p); }
cudaStream_t as_stream(void* p) { return static_cast<cudaStream_t>(p); }
cudaEvent_t as_event(void* p) { return static_cast<cudaEvent_t>(p); }

}  // namespace

std::string new_comm_id() {
  ncclUniqueId id;
  check_nccl(nccl().get_unique_id(&id), "ncclGetUniqueId");
  return std::string(id.internal, sizeof id.internal);
}

Communicator::Communicator(const std::string& id, int rank, int world) : rank_(rank), world_(world) {
  ncclUniqueId uid;
  if (id.size() != sizeof uid.internal) raise(cat("[nccl] a communicator id has ", sizeof uid.internal, " bytes, not ", id.size()));
  std::memcpy(uid.internal, id.data(), id.size());
  const Nccl& n = nccl();
  stream();  // the engine's device and stream first: NCCL binds to the current device
  ncclComm_t comm = nullptr;
  check_nccl(n.comm_init_rank(&comm, world, uid, rank), "ncclCommInitRank");
  comm_ = comm;
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "nccl");
  stream_ = s;
  cudaEvent_t a = nullptr, b = nullptr;
  check(cudaEventCreateWithFlags(&a, cudaEventDisableTiming), "nccl");
  check(cudaEventCreateWithFlags(&b, cudaEventDisableTiming), "nccl");
  ready_ = a;
  done_ = b;
}

Communicator::~Communicator() {
  if (stream_) cudaStreamSynchronize(as_stream(stream_));
  if (comm_) nccl().comm_destroy(as_comm(comm_));
  if (ready_) cudaEventDestroy(as_event(ready_));
  if (done_) cudaEventDestroy(as_event(done_));
  if (stream_) cudaStreamDestroy(as_stream(stream_));
}

void Communicator::sum_async(const std::vector<std::pair<float*, size_t>>& buffers, float premul) {
  const Nccl& n = nccl();
  check(cudaEventRecord(as_event(ready_), stream()), "nccl");
  check(cudaStreamWaitEvent(as_stream(stream_), as_event(ready_), 0), "nccl");
  ncclRedOp_t op;
  check_nccl(n.premul_sum_create(&op, &premul, ncclFloat32, ncclScalarHostImmediate, as_comm(comm_)),
             "ncclRedOpCreatePreMulSum");
  check_nccl(n.group_start(), "ncclGroupStart");
  for (const auto& [p, count] : buffers)
    if (count) check_nccl(n.all_reduce(p, p, count, ncclFloat32, op, as_comm(comm_), as_stream(stream_)), "ncclAllReduce");
  check_nccl(n.group_end(), "ncclGroupEnd");
  check_nccl(n.red_op_destroy(op, as_comm(comm_)), "ncclRedOpDestroy");
  check(cudaEventRecord(as_event(done_), as_stream(stream_)), "nccl");
}

void Communicator::join() { check(cudaStreamWaitEvent(stream(), as_event(done_), 0), "nccl"); }

void Communicator::broadcast_device(void* data, size_t bytes, int root) {
  check(cudaEventRecord(as_event(ready_), stream()), "nccl");
  check(cudaStreamWaitEvent(as_stream(stream_), as_event(ready_), 0), "nccl");
  check_nccl(nccl().broadcast(data, data, bytes, ncclUint8, root, as_comm(comm_), as_stream(stream_)), "ncclBroadcast");
  check(cudaEventRecord(as_event(done_), as_stream(stream_)), "nccl");
  join();
}

void Communicator::broadcast_host(void* data, size_t bytes, int root) {
  if (!bytes) return;
  const std::shared_ptr<void> buf = allocate(bytes, "a broadcast");
  if (rank_ == root) copy_to_device(buf.get(), data, bytes);
  broadcast_device(buf.get(), bytes, root);
  copy_to_host(data, buf.get(), bytes);
}

std::vector<double> Communicator::all_gather(double value) {
  const std::shared_ptr<void> buf = allocate(sizeof(double) * size_t(world_ + 1), "an all-gather");
  double* all = static_cast<double*>(buf.get());
  copy_to_device(all + world_, &value, sizeof value);
  check(cudaEventRecord(as_event(ready_), stream()), "nccl");
  check(cudaStreamWaitEvent(as_stream(stream_), as_event(ready_), 0), "nccl");
  check_nccl(nccl().all_gather(all + world_, all, 1, ncclFloat64, as_comm(comm_), as_stream(stream_)), "ncclAllGather");
  check(cudaEventRecord(as_event(done_), as_stream(stream_)), "nccl");
  join();
  std::vector<double> out(static_cast<size_t>(world_));
  copy_to_host(out.data(), all, sizeof(double) * out.size());
  return out;
}

}  // namespace mamba2::cuda
