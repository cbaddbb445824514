// What a data-parallel trainer needs of the links between its ranks: NCCL between GPUs
// (cuda::Communicator), or TCP between CPU processes (a star through rank 0). Both sum in a fixed
// order for a fixed world, so the same run gives the same bits on every rank.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace mamba2::training {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // The sum over the ranks of each fp32 buffer (where the run's tensors live), in place, every
  // rank's buffer multiplied by its own `premul` first. May return before it is done (NCCL: on
  // its own stream, after the work queued so far); join() makes the next work wait for it.
  virtual void sum_async(const std::vector<std::pair<float*, size_t>>& buffers, float premul) = 0;
  virtual void join() = 0;
  // Host bytes of rank `root` to every rank; returns when they are here.
  virtual void broadcast_host(void* data, size_t bytes, int root) = 0;
  // A tensor's bytes of rank `root` to every rank, where the tensor lives.
  virtual void broadcast(Tensor& t, int root) = 0;
  // Each rank's value, in rank order, on every rank.
  virtual std::vector<double> all_gather(double value) = 0;
};

// NCCL on this process's GPU; `id`: cuda::new_comm_id()'s, made by the rank the others join.
std::unique_ptr<Collective> nccl_collective(const std::string& id, int rank, int world);
// TCP: rank 0 listens at `address` ("host:port") for the others, which connect to it (retrying for
// timeout_s). The sums, gathers and broadcasts go through rank 0, which adds in rank order.
std::unique_ptr<Collective> host_collective(const std::string& address, int rank, int world, int timeout_s = 300);
// An address for host_collective on this host: 127.0.0.1 and a port free now.
std::string local_collective_address();

}  // namespace mamba2::training
