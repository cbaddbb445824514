#include "train/distributed.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "cuda/collectives.h"
#include "mamba2/error.h"
#include "train/collective.h"

extern char** environ;

namespace mamba2::training {

namespace {

constexpr const char* kHello = "mamba2-rendezvous 1";
constexpr const char* kWorkerVar = "MAMBA2_DP_WORKER";
constexpr char kFinished = 'F';

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return int(std::max<int64_t>(0, ms));
}

void send_bytes(int fd, const void* data, size_t bytes, const std::string& where) {
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("[train] {}: the connection dropped ({})", where, std::strerror(errno));
    p += n;
    bytes -= size_t(n);
  }
}

void send_all(int fd, const std::string& s, const std::string& where) { send_bytes(fd, s.data(), s.size(), where); }

// The master's refusal line to a node, best effort (the node may be gone already).
void send_refusal(int fd, const std::string& why) {
  const std::string line = "error " + why + "\n";
  ::send(fd, line.data(), line.size(), MSG_NOSIGNAL);
}

// One line (without its '\n'), or an error naming `where` when none comes before the deadline.
std::string read_line(int fd, Clock::time_point deadline, const std::string& where) {
  std::string line;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r == 0) fail("[train] {}: no answer in time", where);
    if (r < 0 && errno != EINTR) fail("[train] {}: {}", where, std::strerror(errno));
    if (r < 0) continue;
    char c;
    const ssize_t n = ::recv(fd, &c, 1, 0);
    if (n <= 0) fail("[train] {}: the connection closed", where);
    if (c == '\n') return line;
    if (line.size() > 4096) fail("[train] {}: a line too long for the rendezvous protocol", where);
    line += c;
  }
}

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) out += {digits[c >> 4], digits[c & 15]};
  return out;
}

std::optional<std::string> from_hex(const std::string& hex) {
  if (hex.size() % 2) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    auto nib = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = nib(hex[i]), lo = nib(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += char(hi * 16 + lo);
  }
  return out;
}

// Every address of this host, IPv6 and IPv4 (IPv4 alone where the kernel has no IPv6).
int listen_on(int port) {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const bool v6 = fd >= 0;
  if (!v6) fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("[train] --master-port: cannot make a socket ({})", std::strerror(errno));
  const int one = 1, zero = 0;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in6 a6{};
  sockaddr_in a4{};
  if (v6) {
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);  // IPv4 peers too
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_any;
    a6.sin6_port = htons(uint16_t(port));
  } else {
    a4.sin_family = AF_INET;
    a4.sin_addr.s_addr = htonl(INADDR_ANY);
    a4.sin_port = htons(uint16_t(port));
  }
  const int bound = v6 ? ::bind(fd, reinterpret_cast<sockaddr*>(&a6), sizeof a6)
                       : ::bind(fd, reinterpret_cast<sockaddr*>(&a4), sizeof a4);
  if (bound != 0 || ::listen(fd, 64) != 0) {
    const int err = errno;
    ::close(fd);
    fail("[train] --master-port {}: node 0 cannot listen there ({})", port, std::strerror(err));
  }
  return fd;
}

int connect_to(const std::string& host, int port, int timeout_s, Clock::time_point deadline, const std::string& where) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) fail("[train] {}: {}", where, gai_strerror(rc));
  std::string last = "no address";
  for (;;) {
    for (addrinfo* a = res; a; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        ::freeaddrinfo(res);
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return fd;
      }
      last = std::strerror(errno);
      ::close(fd);
    }
    if (remaining_ms(deadline) == 0) {
      ::freeaddrinfo(res);
      fail("[train] {}: node 0 did not answer in {} s ({})", where, timeout_s, last);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

void recv_all(int fd, void* data, size_t bytes, const std::string& where) {
  auto* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::recv(fd, p, bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("[train] {}: the connection closed", where);
    p += n;
    bytes -= size_t(n);
  }
}

}  // namespace

void validate_launch_spec(const LaunchSpec& s) {
  if (s.gpus < 1) fail("[train] --gpus must be at least 1, got {}", s.gpus);
  if (s.nnodes < 1) fail("[train] --nnodes must be at least 1, got {}", s.nnodes);
  if (s.node_rank < 0 || s.node_rank >= s.nnodes)
    fail("[train] --node-rank {} is not a node of --nnodes {} (0 … {})", s.node_rank, s.nnodes, s.nnodes - 1);
  if (s.master_port < 1 || s.master_port > 65534)
    fail("[train] --master-port must be 1 … 65534 (CPU runs over several hosts use the port after it too), got {}",
         s.master_port);
  if (s.master_addr.empty()) fail("[train] --master-addr is empty");
}

NodeGroup::NodeGroup(const LaunchSpec& spec, const std::function<std::string()>& make_id) : spec_(spec) {
  validate_launch_spec(spec);
  const auto deadline = Clock::now() + std::chrono::seconds(spec.timeout_s);
  if (spec.node_rank > 0) {
    const int fd = connect_to(spec.master_addr, spec.master_port, spec.timeout_s, deadline,
                              fmt::format("--master-addr {}:{}", spec.master_addr, spec.master_port));
    peers_.push_back(fd);
    finished_.push_back(false);
    const std::string where = fmt::format("node {} at --master-addr {}:{}", spec.node_rank, spec.master_addr,
                                          spec.master_port);
    send_all(fd, fmt::format("{} {} {}\n", kHello, spec.node_rank, spec.gpus), where);
    const std::string reply = read_line(fd, deadline, where);
    if (reply.rfind("id ", 0) == 0) {
      if (auto id = from_hex(reply.substr(3))) {
        id_ = *id;
        return;
      }
    }
    if (reply.rfind("error ", 0) == 0) fail("[train] node 0 refused node {}: {}", spec.node_rank, reply.substr(6));
    fail("[train] {}: not a mamba2 rendezvous answer", where);
  }
  if (spec.nnodes == 1) {
    id_ = make_id();
    return;
  }
  const int lfd = listen_on(spec.master_port);
  std::vector<int> by_node(size_t(spec.nnodes), -1);
  auto refuse_all = [&](const std::string& why) {
    for (int fd : by_node)
      if (fd >= 0) send_refusal(fd, why), ::close(fd);
    ::close(lfd);
    fail("[train] rendezvous at port {}: {}", spec.master_port, why);
  };
  for (int joined = 1; joined < spec.nnodes;) {
    pollfd p{lfd, POLLIN, 0};
    const int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r == 0) refuse_all(fmt::format("{} of {} nodes arrived in {} s", joined, spec.nnodes, spec.timeout_s));
    if (r < 0) continue;
    const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::string hello;
    try {
      hello = read_line(fd, std::min(deadline, Clock::now() + std::chrono::seconds(10)), "a node's hello");
    } catch (const std::exception&) {
      ::close(fd);  // not one of ours (a port scan, a stray client): keep waiting
      continue;
    }
    int node = -1, gpus = -1;
    std::istringstream in(hello.rfind(kHello, 0) == 0 ? hello.substr(std::strlen(kHello)) : std::string());
    if (!(in >> node >> gpus)) {
      ::close(fd);
      continue;
    }
    if (node < 1 || node >= spec.nnodes || by_node[size_t(node)] >= 0) {
      const std::string why = fmt::format("a node said --node-rank {} (expected each of 1 … {} once)", node, spec.nnodes - 1);
      send_refusal(fd, why);
      ::close(fd);
      refuse_all(why);
    }
    by_node[size_t(node)] = fd;
    if (gpus != spec.gpus)
      refuse_all(fmt::format("node {} runs --gpus {} but node 0 runs --gpus {} (every node the same)", node, gpus,
                             spec.gpus));
    ++joined;
  }
  ::close(lfd);
  id_ = make_id();
  for (int node = 1; node < spec.nnodes; ++node) {
    const int fd = by_node[size_t(node)];
    send_all(fd, "id " + to_hex(id_) + "\n", fmt::format("node {}", node));
    peers_.push_back(fd);
    finished_.push_back(false);
  }
}

NodeGroup::~NodeGroup() {
  stop_ = true;
  if (watcher_.joinable()) watcher_.join();
  for (int fd : peers_) ::close(fd);
}

void NodeGroup::watch() {
  if (!peers_.empty()) watcher_ = std::thread([this] { watch_loop(); });
}

void NodeGroup::watch_loop() {
  std::vector<pollfd> p;
  for (int fd : peers_) p.push_back({fd, POLLIN, 0});
  while (!stop_) {
    if (::poll(p.data(), p.size(), 200) <= 0) continue;
    for (size_t i = 0; i < p.size(); ++i) {
      if (!p[i].revents) continue;
      char c = 0;
      const ssize_t n = ::recv(p[i].fd, &c, 1, 0);
      if (n == 1 && c == kFinished) finished_[i] = true;
      if (n > 0) continue;
      if (!finished_[i]) {
        const int node = spec_.node_rank == 0 ? int(i) + 1 : 0;
        std::fprintf(stderr, "[train] node %d went away before the run ended: stopping this node\n", node);
        std::fflush(stderr);
        ::_exit(1);
      }
      p[i].fd = -1;  // finished and closed: poll skips it
    }
  }
}

void NodeGroup::finish() {
  for (int fd : peers_) ::send(fd, &kFinished, 1, MSG_NOSIGNAL);
}

Workers::Workers(const LaunchSpec& spec, const std::string& comm_id) {
  // Everything exec needs is made before fork: after it the child may only make system calls
  // (other threads of this process held locks at the fork).
  std::ifstream cmdline("/proc/self/cmdline", std::ios::binary);
  const std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
  std::vector<std::string> arg_list;
  for (size_t i = 0; i < args.size();) {
    const size_t end = args.find('\0', i);
    arg_list.push_back(args.substr(i, end - i));
    i = end == std::string::npos ? args.size() : end + 1;
  }
  std::vector<char*> argv;
  for (std::string& a : arg_list) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_extra;
  const pid_t parent = ::getpid();
  for (int local = 1; local < spec.gpus; ++local) {
    const int rank = spec.node_rank * spec.gpus + local;
    env_extra.push_back(fmt::format("{}={} {} {} {}", kWorkerVar, rank, spec.world(), local, to_hex(comm_id)));
  }
  std::vector<std::vector<char*>> envs;
  for (std::string& e : env_extra) {
    std::vector<char*> env;
    for (char** p = environ; *p; ++p)
      if (std::strncmp(*p, kWorkerVar, std::strlen(kWorkerVar)) != 0) env.push_back(*p);
    env.push_back(e.data());
    env.push_back(nullptr);
    envs.push_back(std::move(env));
  }
  for (auto& env : envs) {
    const pid_t pid = ::fork();
    if (pid < 0) fail("[train] cannot start a worker process ({})", std::strerror(errno));
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);  // the launcher is already gone
      ::execve("/proc/self/exe", argv.data(), env.data());
      ::_exit(127);
    }
    pids_.push_back(pid);
    status_.push_back(-1);
  }
  watcher_ = std::thread([this] { watch_loop(); });
}

void Workers::watch_loop() {
  for (;;) {
    bool running = false;
    for (size_t i = 0; i < pids_.size(); ++i) {
      if (status_[i] >= 0) continue;
      int st = 0;
      const pid_t r = ::waitpid(pids_[i], &st, WNOHANG);
      if (r == 0) {
        running = true;
        continue;
      }
      status_[i] = r < 0 ? 255 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      if (status_[i] != 0 && !stop_) {
        std::fprintf(stderr, "[train] local rank %zu (pid %d) ended with status %d: stopping this node\n", i + 1,
                     int(pids_[i]), status_[i]);
        std::fflush(stderr);
        ::_exit(1);
      }
    }
    if (!running) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Workers::wait() {
  if (watcher_.joinable()) watcher_.join();
  for (size_t i = 0; i < pids_.size(); ++i)
    if (status_[i] != 0) fail("[train] local rank {} ended with status {}", i + 1, status_[i]);
}

Workers::~Workers() {
  if (watcher_.joinable()) {  // the launcher failed: its workers go too
    stop_ = true;
    for (size_t i = 0; i < pids_.size(); ++i)
      if (status_[i] < 0) ::kill(pids_[i], SIGTERM);
    watcher_.join();
  }
}

std::optional<DataParallel> worker_from_environment() {
  const char* v = std::getenv(kWorkerVar);
  if (!v) return std::nullopt;
  std::istringstream in(v);
  DataParallel dp;
  std::string hex;
  if (!(in >> dp.rank >> dp.world >> dp.local_rank >> hex) || dp.world < 2 || dp.rank < 1 || dp.rank >= dp.world ||
      dp.local_rank < 1)
    fail("[train] {} is malformed: '{}' (set by the launcher; unset it to train)", kWorkerVar, v);
  auto id = from_hex(hex);
  if (!id) fail("[train] {} holds no communicator id", kWorkerVar);
  dp.comm_id = *id;
  return dp;
}

// ---- The links of a run's ranks ----

namespace {

class NcclCollective final : public Collective {
 public:
  NcclCollective(const std::string& id, int rank, int world) : c_(id, rank, world) {}
  int rank() const override { return c_.rank(); }
  int world() const override { return c_.world(); }
  void sum_async(const std::vector<std::pair<float*, size_t>>& b, float premul) override { c_.sum_async(b, premul); }
  void join() override { c_.join(); }
  void broadcast_host(void* data, size_t bytes, int root) override { c_.broadcast_host(data, bytes, root); }
  void broadcast(Tensor& t, int root) override { c_.broadcast_device(t.raw(), t.nbytes(), root); }
  std::vector<double> all_gather(double value) override { return c_.all_gather(value); }

 private:
  cuda::Communicator c_;
};

// A star through rank 0: each other rank sends its part there; rank 0 combines in rank order and
// sends the result back. Every call is done when it returns (the CPU trainer has nothing to
// overlap it with).
class HostCollective final : public Collective {
 public:
  HostCollective(const std::string& address, int rank, int world, int timeout_s) : rank_(rank), world_(world) {
    const size_t colon = address.rfind(':');
    const std::string host = colon == std::string::npos ? address : address.substr(0, colon);
    const int port = colon == std::string::npos ? 0 : std::atoi(address.c_str() + colon + 1);
    if (port <= 0) fail("[train] rank {}: '{}' is not host:port", rank, address);
    const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    if (rank > 0) {
      const int fd = connect_to(host, port, timeout_s, deadline, fmt::format("rank {} joining rank 0 at {}", rank, address));
      peers_.assign(1, fd);
      const int32_t r = rank;
      send_bytes(fd, &r, sizeof r, where(0));
      return;
    }
    const int lfd = listen_on(port);
    peers_.assign(size_t(world), -1);
    for (int joined = 1; joined < world;) {
      pollfd p{lfd, POLLIN, 0};
      const int ready = ::poll(&p, 1, remaining_ms(deadline));
      if (ready == 0) {
        ::close(lfd);
        fail("[train] rank 0 at {}: {} of {} ranks joined in {} s", address, joined, world, timeout_s);
      }
      if (ready < 0) continue;
      const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      int32_t r = -1;
      pollfd q{fd, POLLIN, 0};
      if (::poll(&q, 1, 10000) != 1 || ::recv(fd, &r, sizeof r, MSG_WAITALL) != ssize_t(sizeof r) || r < 1 ||
          r >= world || peers_[size_t(r)] >= 0) {
        ::close(fd);  // not one of ours, or a rank twice
        continue;
      }
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      peers_[size_t(r)] = fd;
      ++joined;
    }
    ::close(lfd);
  }
  ~HostCollective() override {
    for (int fd : peers_)
      if (fd >= 0) ::close(fd);
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }

  void sum_async(const std::vector<std::pair<float*, size_t>>& buffers, float premul) override {
    for (const auto& [p, n] : buffers) {
      std::vector<float> part(n);
      for (size_t i = 0; i < n; ++i) part[i] = p[i] * premul;
      if (rank_ > 0) {
        send_bytes(peers_[0], part.data(), n * sizeof(float), where(0));
        recv_all(peers_[0], p, n * sizeof(float), where(0));
        continue;
      }
      std::vector<float> other(n);
      for (int r = 1; r < world_; ++r) {
        recv_all(peers_[size_t(r)], other.data(), n * sizeof(float), where(r));
        for (size_t i = 0; i < n; ++i) part[i] += other[i];
      }
      std::copy(part.begin(), part.end(), p);
      for (int r = 1; r < world_; ++r) send_bytes(peers_[size_t(r)], p, n * sizeof(float), where(r));
    }
  }
  void join() override {}
  void broadcast_host(void* data, size_t bytes, int root) override {
    if (root != 0) fail("[train] the CPU ranks broadcast from rank 0 only");
    if (rank_ > 0) return recv_all(peers_[0], data, bytes, where(0));
    for (int r = 1; r < world_; ++r) send_bytes(peers_[size_t(r)], data, bytes, where(r));
  }
  void broadcast(Tensor& t, int root) override { broadcast_host(t.raw(), t.nbytes(), root); }
  std::vector<double> all_gather(double value) override {
    std::vector<double> all(static_cast<size_t>(world_));
    if (rank_ > 0) {
      send_bytes(peers_[0], &value, sizeof value, where(0));
      recv_all(peers_[0], all.data(), all.size() * sizeof(double), where(0));
      return all;
    }
    all[0] = value;
    for (int r = 1; r < world_; ++r) recv_all(peers_[size_t(r)], &all[size_t(r)], sizeof(double), where(r));
    for (int r = 1; r < world_; ++r) send_bytes(peers_[size_t(r)], all.data(), all.size() * sizeof(double), where(r));
    return all;
  }

 private:
  std::string where(int peer) const { return fmt::format("rank {}'s link to rank {}", rank_, peer); }
  int rank_, world_;
  std::vector<int> peers_;  // rank 0: a socket per rank (its own slot unused); the others: rank 0's
};

}  // namespace

std::unique_ptr<Collective> nccl_collective(const std::string& id, int rank, int world) {
  return std::make_unique<NcclCollective>(id, rank, world);
}

std::unique_ptr<Collective> host_collective(const std::string& address, int rank, int world, int timeout_s) {
  return std::make_unique<HostCollective>(address, rank, world, timeout_s);
}

std::string local_collective_address() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    fail("[train] no free local port for the ranks' links ({})", std::strerror(errno));
  }
  ::close(fd);
  return fmt::format("127.0.0.1:{}", ntohs(a.sin_port));
}

}  // namespace mamba2::training
