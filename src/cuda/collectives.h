// Collectives across the GPUs of a data-parallel run (one process per GPU), through NCCL. NCCL is
// loaded when the first communicator is made (libnccl.so.2 on the library path), so a binary that
// never trains on several GPUs needs no NCCL. Plain C++ like cuda/runtime.h.
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace mamba2::cuda {

// A new NCCL unique id (its 128 bytes), made by the rank that the others join.
std::string new_comm_id();

class Communicator {
 public:
  // This process's rank of `world`, on the GPU select_device chose; blocks until every rank has
  // joined. NVLink multicast stays off (NCCL_NVLS_ENABLE=0): on shared hosts it can take the GPUs
  // out of service.
  Communicator(const std::string& id, int rank, int world);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  int rank() const { return rank_; }
  int world() const { return world_; }

  // The sum over the ranks of each fp32 device buffer (pointer, elements), in place, every rank's
  // buffer multiplied by its own `premul` first; one grouped launch on the communication stream,
  // after the work the engine's stream holds now. Returns at once: the engine's stream may go on
  // with other work, which is the point (the backward of earlier layers). NCCL's ring sums in a
  // fixed order for a fixed world, so the same run gives the same bits on every rank.
  void sum_async(const std::vector<std::pair<float*, size_t>>& buffers, float premul);
  // The engine's stream waits for every sum_async issued so far.
  void join();
  // Host bytes of rank `root` to every rank (the same size everywhere); returns when they are here.
  void broadcast_host(void* data, size_t bytes, int root);
  // Device buffers of rank `root` to every rank, in place, on the engine's stream's order.
  void broadcast_device(void* data, size_t bytes, int root);
  // Each rank's value, in rank order, on every rank.
  std::vector<double> all_gather(double value);

 private:
  int rank_ = 0, world_ = 1;
  // Unused by a build without CUDA (cuda/runtime_none.cpp's methods only refuse).
  [[maybe_unused]] void* comm_ = nullptr;    // ncclComm_t
  [[maybe_unused]] void* stream_ = nullptr;  // cudaStream_t of the collectives
  [[maybe_unused]] void* ready_ = nullptr;   // cudaEvent_t: the engine's work the next collective waits for
  [[maybe_unused]] void* done_ = nullptr;    // cudaEvent_t: the collectives issued so far
};

}  // namespace mamba2::cuda
