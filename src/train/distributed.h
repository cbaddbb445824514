// The processes of a data-parallel run, as torchrun starts them: on each of `nnodes` hosts one
// launcher (`mamba2 train --gpus G --nnodes N --node-rank K --master-addr A --master-port P`) that
// runs G processes, one per GPU; global rank K·G + local rank. The launcher itself is local rank 0;
// the others are this executable started again with the same arguments and MAMBA2_DP_WORKER in
// their environment. The launchers meet over TCP at the master (node 0), which makes the NCCL id
// and hands it out; NCCL then finds its own way between the GPUs.
//
// Failure: a process that ends before the run does ends the run. Workers die with their launcher
// (PR_SET_PDEATHSIG); a launcher whose worker fails, or whose TCP link to another node drops
// before that node said it finished, exits with status 1, which ends its workers too.
#pragma once
#include <sys/types.h>

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mamba2/train.h"

namespace mamba2::training {

struct LaunchSpec {
  int gpus = 1, nnodes = 1, node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  int timeout_s = 300;  // for the other nodes to meet at the master
  int world() const { return gpus * nnodes; }
};
// Ranges and conflicts, naming the flag.
void validate_launch_spec(const LaunchSpec& spec);

// The launchers' meeting over TCP (the constructor returns once every node is there and the id is
// shared), and the links kept open afterwards to notice a node that goes away.
class NodeGroup {
 public:
  // Node 0 listens on master_port and makes the id with make_id once the other nodes have said
  // hello (their node rank, distinct and in range, and the same --gpus); the others connect to
  // master_addr:master_port, retrying until timeout_s.
  NodeGroup(const LaunchSpec& spec, const std::function<std::string()>& make_id);
  ~NodeGroup();
  NodeGroup(const NodeGroup&) = delete;
  NodeGroup& operator=(const NodeGroup&) = delete;
  const std::string& comm_id() const { return id_; }
  // From now on a link that drops before its node said it finished ends this process (status 1).
  void watch();
  // Tells the other nodes that this one finished as it should.
  void finish();

 private:
  void watch_loop();
  LaunchSpec spec_;
  std::string id_;
  std::vector<int> peers_;  // node 0: a socket per other node; the others: the master's
  std::vector<bool> finished_;
  std::atomic<bool> stop_{false};
  std::thread watcher_;
};

// Starts local ranks 1 … gpus-1 of this node: this executable with this process's arguments.
// Each dies with this process. A thread watches them: one that fails ends this process (status 1).
class Workers {
 public:
  Workers(const LaunchSpec& spec, const std::string& comm_id);
  ~Workers();
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;
  // Waits for every worker; fails if one did not exit with status 0.
  void wait();

 private:
  void watch_loop();
  std::vector<pid_t> pids_;
  std::vector<int> status_;
  std::atomic<bool> stop_{false};
  std::thread watcher_;
};

// The worker's part from MAMBA2_DP_WORKER ("rank world local_rank id-in-hex"), or nothing when
// this process is not a worker.
std::optional<DataParallel> worker_from_environment();

}  // namespace mamba2::training
