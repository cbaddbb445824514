// The launch of a data-parallel run without GPUs: the nodes' TCP meeting (one id for all, made
// once; refusals of a wrong --gpus or a node rank given twice; a master that never answers), the
// flags' checks and the worker's environment. The runs themselves are GPU tests
// (test_train_run.cpp, TrainRun.*Gpus*).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "cuda/runtime.h"
#include "mamba2/error.h"
#include "test_support.h"
#include "train/distributed.h"

namespace mamba2 {
namespace {

// The worker processes Workers starts are this test binary again (with its arguments): with
// MAMBA2_DP_TEST_CHILD set they stop before main, as a worker would: "sleep" for 60 s (a worker
// that hangs), else exit with that status.
const bool kDpChildProbe = [] {
  const char* v = std::getenv("MAMBA2_DP_TEST_CHILD");
  if (!v) return false;
  if (std::string(v) == "sleep") ::sleep(60);
  ::_exit(std::atoi(v));
}();

using training::LaunchSpec;
using training::NodeGroup;

// A port nothing listens on now (the kernel's pick for an ephemeral bind, released).
int dp_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

LaunchSpec dp_node_spec(int node, int nnodes, int gpus, int port) {
  LaunchSpec s;
  s.node_rank = node;
  s.nnodes = nnodes;
  s.gpus = gpus;
  s.master_port = port;
  s.timeout_s = 20;
  return s;
}

std::string dp_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(DataParallelLaunch, ThreeNodesMeetAndShareOneId) {
  const int port = dp_free_port();
  std::atomic<int> made{0};
  auto make_id = [&] {
    ++made;
    return std::string("id-\x01\x02\xff", 6);
  };
  std::string ids[3];
  std::thread others[2];
  for (int node = 1; node <= 2; ++node)
    others[node - 1] = std::thread([&, node] { ids[node] = NodeGroup(dp_node_spec(node, 3, 2, port), make_id).comm_id(); });
  ids[0] = NodeGroup(dp_node_spec(0, 3, 2, port), make_id).comm_id();
  for (auto& t : others) t.join();
  EXPECT_EQ(made.load(), 1);
  for (const std::string& id : ids) EXPECT_EQ(id, std::string("id-\x01\x02\xff", 6));
}

// A stray client (a port scan, a wrong program) is dropped and the master keeps waiting for its nodes.
TEST(DataParallelLaunch, TheMasterIgnoresStrayClients) {
  const int port = dp_free_port();
  std::string id1;
  std::thread stray([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    for (const char* junk : {"GET / HTTP/1.1\r\n\r\n", "mamba2-rendezvous 1 x y\n", "\x00\x01\x02\n"}) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(uint16_t(port));
      if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) ::send(fd, junk, std::strlen(junk) + 1, 0);
      ::close(fd);
    }
    id1 = NodeGroup(dp_node_spec(1, 2, 1, port), [] { return std::string(); }).comm_id();
  });
  const std::string id0 = NodeGroup(dp_node_spec(0, 2, 1, port), [] { return std::string("the id"); }).comm_id();
  stray.join();
  EXPECT_EQ(id0, "the id");
  EXPECT_EQ(id1, "the id");
}

TEST(DataParallelLaunch, TheMasterRefusesAnotherGpuCountOrARankGivenTwice) {
  auto make_id = [] { return std::string(8, 'x'); };
  {
    const int port = dp_free_port();
    std::string client;
    std::thread t([&] { client = dp_error_of([&] { NodeGroup(dp_node_spec(1, 2, 4, port), make_id); }); });
    const std::string master = dp_error_of([&] { NodeGroup(dp_node_spec(0, 2, 2, port), make_id); });
    t.join();
    EXPECT_NE(master.find("node 1 runs --gpus 4 but node 0 runs --gpus 2"), std::string::npos) << master;
    EXPECT_NE(client.find("node 0 refused node 1"), std::string::npos) << client;
  }
  {
    const int port = dp_free_port();
    std::string c1, c2;
    std::thread t1([&] { c1 = dp_error_of([&] { NodeGroup(dp_node_spec(1, 3, 1, port), make_id); }); });
    std::thread t2([&] { c2 = dp_error_of([&] { NodeGroup(dp_node_spec(1, 3, 1, port), make_id); }); });
    const std::string master = dp_error_of([&] { NodeGroup(dp_node_spec(0, 3, 1, port), make_id); });
    t1.join();
    t2.join();
    EXPECT_NE(master.find("--node-rank 1 (expected each of 1 … 2 once)"), std::string::npos) << master;
    EXPECT_NE((c1 + c2).find("refused"), std::string::npos) << c1 << " / " << c2;
  }
}

TEST(DataParallelLaunch, ANodeWithoutItsMasterGivesUpNamingTheAddress) {
  LaunchSpec s = dp_node_spec(1, 2, 1, dp_free_port());
  s.timeout_s = 1;
  const std::string e = dp_error_of([&] { NodeGroup(s, [] { return std::string(); }); });
  EXPECT_NE(e.find("--master-addr 127.0.0.1:" + std::to_string(s.master_port) + ": node 0 did not answer in 1 s"),
            std::string::npos)
      << e;
  LaunchSpec m = dp_node_spec(0, 2, 1, dp_free_port());
  m.timeout_s = 1;
  const std::string e0 = dp_error_of([&] { NodeGroup(m, [] { return std::string(); }); });
  EXPECT_NE(e0.find("1 of 2 nodes arrived in 1 s"), std::string::npos) << e0;
}

TEST(DataParallelLaunch, FlagsAreChecked) {
  LaunchSpec s;
  s.gpus = 0;
  EXPECT_NE(dp_error_of([&] { training::validate_launch_spec(s); }).find("--gpus must be at least 1"), std::string::npos);
  s = LaunchSpec{};
  s.nnodes = 2;
  s.node_rank = 2;
  EXPECT_NE(dp_error_of([&] { training::validate_launch_spec(s); }).find("--node-rank 2 is not a node of --nnodes 2"),
            std::string::npos);
  s = LaunchSpec{};
  s.master_port = 70000;
  EXPECT_NE(dp_error_of([&] { training::validate_launch_spec(s); }).find("--master-port must be 1 … 65534"),
            std::string::npos);

  ::setenv("MAMBA2_DP_WORKER", "1 2 1 zz", 1);
  EXPECT_NE(dp_error_of([] { training::worker_from_environment(); }).find("holds no communicator id"), std::string::npos);
  ::setenv("MAMBA2_DP_WORKER", "3 2 1 00", 1);
  EXPECT_NE(dp_error_of([] { training::worker_from_environment(); }).find("MAMBA2_DP_WORKER is malformed"),
            std::string::npos);
  ::setenv("MAMBA2_DP_WORKER", "1 2 1 0aff", 1);
  const auto w = training::worker_from_environment();
  ::unsetenv("MAMBA2_DP_WORKER");
  ASSERT_TRUE(w);
  EXPECT_EQ(w->rank, 1);
  EXPECT_EQ(w->world, 2);
  EXPECT_EQ(w->comm_id, std::string("\x0a\xff", 2));
  EXPECT_FALSE(training::worker_from_environment());
}

// Runs `body` in a child process (the watchers end the process they live in); its exit status
// and what it wrote to stderr.
std::pair<int, std::string> dp_in_child(const std::function<void()>& body) {
  test::TempDir tmp;
  const std::string err = (tmp / "err").string();
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::freopen(err.c_str(), "w", stderr);
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "threw: %s\n", e.what());
      std::fflush(stderr);
      ::_exit(2);
    }
    std::fflush(stderr);
    ::_exit(0);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, test::read_file(err)};
}

TEST(DataParallelLaunch, AWorkerThatFailsEndsItsLauncher) {
  LaunchSpec s;
  s.gpus = 3;
  // Workers that end well: wait() returns.
  auto r = dp_in_child([&] {
    ::setenv("MAMBA2_DP_TEST_CHILD", "0", 1);
    training::Workers w(s, "id");
    w.wait();
  });
  EXPECT_EQ(r.first, 0) << r.second;
  // One fails while the launcher trains: the launcher ends with status 1, naming it.
  r = dp_in_child([&] {
    ::setenv("MAMBA2_DP_TEST_CHILD", "3", 1);
    training::Workers w(s, "id");
    ::sleep(30);  // "training": the watcher ends the process long before
  });
  EXPECT_EQ(r.first, 1) << r.second;
  EXPECT_NE(r.second.find("ended with status 3: stopping this node"), std::string::npos) << r.second;
  // The launcher fails: its hanging workers are ended with it, at once.
  const auto t0 = std::chrono::steady_clock::now();
  r = dp_in_child([&] {
    ::setenv("MAMBA2_DP_TEST_CHILD", "sleep", 1);
    training::Workers w(s, "id");
    throw std::runtime_error("rank 0 failed");
  });
  EXPECT_EQ(r.first, 2) << r.second;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
}

// The CLI: several GPUs asked of a machine without them, and bad launch flags, fail at once.
TEST(DataParallelLaunch, TheCliRefusesGpusItDoesNotHave) {
  if (cuda::device_count() >= 2) GTEST_SKIP() << "this machine has the GPUs";
  test::TempDir tmp;
  test::write_file(tmp / "a.txt", "some text to train on\n");
  const std::string base = "train --preset 130m --d-model 32 --n-layer 1 --tokenizer " +
                           test::shell_quote(MAMBA2_SOURCE_DIR "/models/kjv/model/tokenizer.json") + " --train " +
                           test::shell_quote((tmp / "a.txt").string()) + " --max-steps 1 --out " +
                           test::shell_quote((tmp / "run").string());
  test::CliResult r = test::run_cli(base + " --gpus 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--gpus 2: this machine shows"), std::string::npos) << r.err;
  r = test::run_cli(base + " --nnodes 2 --node-rank 5");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--node-rank 5 is not a node of --nnodes 2"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "run" / "metrics.jsonl"));
}

}  // namespace
}  // namespace mamba2
