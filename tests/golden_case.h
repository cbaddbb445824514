// The golden fixtures (tests/fixtures/golden, made by scripts/make_golden.py): a model, token ids
// split into sequences, and the float64 logits; and every position of them through decode.
#pragma once
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "io/npy.h"
#include "mamba2/model.h"
#include "model/inference_state.h"
#include "test_files.h"
#include "test_support.h"

namespace mamba2::test {

// fp32 compute vs the float64 oracle: relative L2 ≤ 1e-4 per sequence (the README's tolerance
// contract), on the CPU and on the GPU.
inline constexpr double kGoldenTol = 1e-4;

// The bound on q8 logits against float64. A q8_0 block's step is max|w|/127, about 2.1σ/127 for
// the 32 normal weights of a block, so each weight is off by ≈ step/√12 ≈ 4.8e-3σ rms: 4.3× bf16's
// rounding (2⁻⁹/√3 ≈ 1.1e-3 relative), whose logits are off by 5.4–5.5e-3 here (the bf16 test's
// print). Errors adding as in the bf16 case put q8 near 2.4e-2; measured 1.4–1.6e-2 (2026-12-01),
// so 2.5e-2 leaves 1.6×. (The quantizer itself is checked element by element in test_linear.cpp.)
inline constexpr double kQ8LogitsBound = 2.5e-2;
// q8 weights with the activations quantized too (the default with AVX-512 VNNI, cpu/simd/q8x8.h):
// each block of 32 activations rounded with a step of max|x|/127, as the weights are, adds an error
// of the same kind; activations are heavier-tailed than normal weights (a larger block max for
// their rms), so it is somewhat larger than the weights' own. Measured 2.4–3.2e-2 on the four
// fixtures (2026-12-01, against the weights' 1.4–1.6e-2 alone), so 5e-2 leaves 1.5×.
inline constexpr double kQ8Int8LogitsBound = 5e-2;

// q4_0: a block's step d ≈ max|w|/7.5 ≈ 2.1σ/7.5 (the search trims it a little), so each weight
// is off by ≈ d/√12 ≈ 0.08σ rms, about 17× q8's; errors adding as for q8 would put the logits near
// 17 × 1.5e-2 ≈ 0.25 of their norm, and with the embedding and head in q4 too they were: 0.22–0.27
// (2026-12-01). With those two in q8 (place_weights) it is 0.15–0.17 on the four fixtures, so 0.3
// leaves 1.8×. q4 is for large trained models, not these tiny random ones: the bound tells a working
// kernel from a broken one (off by ~1 or more); the exact part, the kernels being the fp32 kernels
// on the dequantized weights, is checked bit for bit in narrow_weights_error.
inline constexpr double kQ4LogitsBound = 0.3;
// q4 with the activations quantized too (Q4_0 · int8 and the embedding's and head's Q8_0 · int8):
// 0.146–0.171 on the four fixtures and 0.172 for official_fp32.q4_0.gguf (2026-12-01), against
// 0.146–0.170 and 0.173 with fp32 activations: the activations' rounding adds in quadrature to the
// weights' much larger error, and kQ4LogitsBound holds both. What tells a working int8 path from a
// broken one is how far it moves the logits from the fp32 activations' on the same weights:
// 1.75–1.86e-2 for q8 and q4 alike (the same rounding of the same activations), so 3e-2 leaves 1.6×.
inline constexpr double kInt8ActivationsShiftBound = 3e-2;

struct GoldenCase {
  std::filesystem::path dir;
  std::vector<int32_t> ids;
  std::vector<int64_t> lengths;
  NpyArray logits;
};

// mamba_ssm in bf16 on the H200 against the float64 oracle on these fixtures
// (bench/mamba_ssm_golden.py, 2026-11-30): relative L2, worst sequence. The bar for our reduced-
// precision paths.
inline double mamba_ssm_bf16_error(const std::string& fixture) {
  if (fixture == "official_fp32") return 1.19e-2;
  if (fixture == "hf_fp32_g2_dtlimit") return 1.05e-2;
  if (fixture == "hf_bf16_sharded") return 6.87e-3;
  if (fixture == "official_fp16_g4") return 1.12e-2;
  ADD_FAILURE() << "no mamba_ssm figure for " << fixture;
  return 0.0;
}

inline GoldenCase load_golden_case(const std::string& name) {
  GoldenCase g;
  g.dir = std::filesystem::path(MAMBA2_FIXTURES_DIR) / "golden" / name;
  const auto j = nlohmann::json::parse(read_file(g.dir / "case.json"));
  g.ids = j.at("ids").get<std::vector<int32_t>>();
  g.lengths = j.at("lengths").get<std::vector<int64_t>>();
  g.logits = read_npy(g.dir / "logits.npy");
  return g;
}

// Every position through decode, all sequences advancing together in their slots (those still
// running), rows in input order; unwritten rows stay NaN.
inline std::vector<float> decode_all(const Model& m, std::span<const int32_t> ids, std::span<const int64_t> lengths) {
  const int64_t V = m.vocab();
  std::vector<int64_t> offsets(lengths.size());
  int64_t total = 0, max_len = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    offsets[s] = total;
    total += lengths[s];
    max_len = std::max(max_len, lengths[s]);
  }
  std::vector<float> out(size_t(total * V), std::nanf("")), step;
  auto state = m.new_state(int64_t(lengths.size()));
  for (int64_t t = 0; t < max_len; ++t) {
    std::vector<int32_t> tokens;
    std::vector<int64_t> slots;
    for (size_t s = 0; s < lengths.size(); ++s)
      if (t < lengths[s]) {
        tokens.push_back(ids[size_t(offsets[s] + t)]);
        slots.push_back(int64_t(s));
      }
    m.decode(tokens, slots, *state, step);
    for (size_t i = 0; i < slots.size(); ++i)
      std::copy_n(step.data() + i * size_t(V), V, out.data() + (offsets[size_t(slots[i])] + t) * V);
  }
  return out;
}

// The worst sequence's relative L2 of `ours` (g's rows in order, V columns) to the oracle's logits.
inline double worst_sequence_error(const GoldenCase& g, const float* ours, int64_t V) {
  double worst = 0.0;
  int64_t row = 0;
  for (int64_t L : g.lengths) {
    worst = std::max(worst, rel_l2(ours + row * V, g.logits.data.data() + row * V, size_t(L * V)));
    row += L;
  }
  return worst;
}

}  // namespace mamba2::test
