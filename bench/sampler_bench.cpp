// sampler_bench: time per token of mamba2's sampler (src/generate/sampler.h) over a GPT-NeoX-
// sized vocabulary of random logits, for the filters a request may ask for. Every sampled token
// of `mamba2 generate` and of the server goes through it on the host, whatever the device.
//
//   sampler_bench [--vocab 50280] [--rows 20] [--repeats 10]
//
// "checksum" sums the drawn ids: two builds draw the same tokens exactly when their checksums
// agree (same seeds, same logits).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "generate/sampler.h"

int main(int argc, char** argv) {
  int64_t vocab = 50280, rows = 20, repeats = 10;
  CLI::App app{"sampler_bench: time per sampled token"};
  app.add_option("--vocab", vocab, "Logits per row")->capture_default_str();
  app.add_option("--rows", rows, "Distinct rows of logits")->capture_default_str();
  app.add_option("--repeats", repeats, "Passes over the rows")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  struct Filters {
    const char* name;
    int64_t top_k;
    float top_p, min_p;
  };
  const Filters filters[] = {{"top_p 0.95 alone", 0, 0.95f, 0.0f},
                             {"defaults (top_k 40, top_p 0.95, min_p 0.05)", 40, 0.95f, 0.05f},
                             {"temperature alone", 0, 1.0f, 0.0f}};
  std::mt19937 gen(1);
  for (const float scale : {1.0f, 8.0f}) {  // flat and peaked next-token distributions
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<std::vector<float>> logits(static_cast<size_t>(rows), std::vector<float>(static_cast<size_t>(vocab)));
    for (auto& row : logits)
      for (float& x : row) x = normal(gen);
    for (const Filters& f : filters) {
      mamba2::SamplingParams p;
      p.temperature = 0.8f;
      p.top_k = f.top_k;
      p.top_p = f.top_p;
      p.min_p = f.min_p;
      p.seed = 3;
      mamba2::Sampler s(p, vocab);
      int64_t checksum = 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t r = 0; r < repeats; ++r)
        for (const auto& row : logits) checksum += s.sample(row);
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / double(repeats * rows);
      std::printf("logits N(0, %.0f²), temperature 0.8, %s: %.3f ms per token (checksum %lld)\n", scale, f.name, ms,
                  static_cast<long long>(checksum));
    }
  }
}
