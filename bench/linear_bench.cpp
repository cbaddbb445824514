// Linear-layer throughput: our tiled GEMM (prefill) under each instruction set this CPU runs,
// the streaming kernel (decode) and OpenBLAS's sgemm, side by side on the same operands, for
// the 130m model's projections. Prints GFLOP/s (best of --repeats) and whether the tiled
// results are bitwise equal across instruction sets.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/simd/isa.h"
#include "cpu/simd/tile.h"
#include "mamba2/error.h"

using namespace mamba2;

namespace {

template <class F>
double best_seconds(int repeats, F&& f) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"linear_bench: tiled GEMM vs streaming vs OpenBLAS sgemm"};
  std::vector<int64_t> rows{1, 8, 64, 512, 2048};
  std::vector<std::string> shapes{"3352x768", "768x1536", "50288x768"};
  int repeats = 5, threads = 0;
  app.add_option("--rows", rows, "Row counts m")->delimiter(',');
  app.add_option("--shapes", shapes, "Weight shapes NxK (n outputs, k inputs)")->delimiter(',');
  app.add_option("--repeats", repeats, "Runs per figure (best taken)");
  app.add_option("--threads", threads, "OpenMP threads (default: all)");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) omp_set_num_threads(threads);
  try {
    std::mt19937 g(1);
    std::normal_distribution<float> d;
    std::printf("threads %d, compiled for: %s\n", omp_get_max_threads(),
                cpu::simd::compiled_isa_extensions().c_str());
    std::printf("%-10s %6s", "W", "m");
    for (auto isa : cpu::simd::available_isas()) std::printf(" %10s", cpu::simd::isa_name(isa));
    std::printf(" %10s %10s  (GFLOP/s)\n", "streaming", "sgemm");
    for (const auto& s : shapes) {
      int64_t n = 0, k = 0;
      if (std::sscanf(s.c_str(), "%ldx%ld", &n, &k) != 2 || n <= 0 || k <= 0)
        fail("[linear_bench] --shapes: '{}' is not NxK", s);
      std::vector<float> W(size_t(n * k));
      for (auto& v : W) v = d(g);
      for (int64_t m : rows) {
        std::vector<float> x(size_t(m * k)), y(size_t(m * n)), ref;
        for (auto& v : x) v = d(g);
        const double flops = 2.0 * double(m) * double(n) * double(k);
        std::printf("%-10s %6ld", s.c_str(), long(m));
        bool same = true;
        for (auto isa : cpu::simd::available_isas()) {
          cpu::simd::set_isa(isa);
          const double t = best_seconds(repeats, [&] { cpu::linear_tiled(x.data(), k, W.data(), y.data(), n, m, n, k); });
          if (ref.empty()) ref = y;
          else same = same && std::memcmp(ref.data(), y.data(), y.size() * sizeof(float)) == 0;
          std::printf(" %10.1f", flops / t * 1e-9);
        }
        cpu::simd::set_isa(cpu::simd::available_isas().front());
        const double ts = best_seconds(repeats, [&] { cpu::linear_streaming(x.data(), k, W.data(), y.data(), n, m, n, k); });
        const double tb = best_seconds(repeats, [&] { cpu::linear_gemm(x.data(), k, W.data(), y.data(), n, m, n, k); });
        std::printf(" %10.1f %10.1f  %s\n", flops / ts * 1e-9, flops / tb * 1e-9, same ? "" : "TILED RESULTS DIFFER BY ISA");
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
