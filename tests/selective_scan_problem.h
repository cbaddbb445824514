// Random problems for the selective scan tests (CPU and GPU): packed sequences continuing from
// states in slots other than their index, with every branch of softplus exercised.
#pragma once
#include <cmath>
#include <random>
#include <vector>

#include "core/tensor.h"
#include "ops/ops.h"

namespace mamba2::test {

struct SelectiveProblem {
  int64_t Dc, N;
  bool complex, gated;
  std::vector<int64_t> lengths, slots;
  int64_t batch;  // state rows
  Tensor A_log, A_imag, D, dt_bias;
  Tensor x, dt, B, C, z, states0;
  int64_t T() const { return x.dim(0); }
  int64_t bw() const { return complex ? 2 * N : N; }
};

inline SelectiveProblem make_selective_problem(int64_t Dc, int64_t N, bool complex, bool gated, std::vector<int64_t> lengths, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  SelectiveProblem p{Dc, N, complex, gated, lengths, {}, int64_t(lengths.size()) + 2, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  // Slots in reverse order, past the first two rows: not the identity.
  for (size_t s = 0; s < lengths.size(); ++s) p.slots.push_back(p.batch - 1 - int64_t(s));
  int64_t T = 0;
  for (int64_t L : lengths) T += L;
  auto fill = [&](Tensor& t, Shape shape, auto f) {
    t = Tensor::empty(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = float(f(i));
  };
  fill(p.A_log, {Dc, N}, [&](int64_t i) { return std::log(double(i % N + 1)) + 0.3 * g(rng); });
  if (complex) fill(p.A_imag, {Dc, N}, [&](int64_t i) { return M_PI * double(i % N) + 0.5 * g(rng); });
  fill(p.D, {Dc}, [&](int64_t) { return 1.0 + 0.5 * g(rng); });
  // dt biases spread so that softplus sees large (> 20: its linear branch), ordinary and very
  // negative arguments.
  fill(p.dt_bias, {Dc}, [&](int64_t i) { return i % 7 == 0 ? 22.0 : i % 7 == 1 ? -12.0 : std::log(std::expm1(0.001 + 0.1 * u(rng))); });
  fill(p.x, {T, Dc}, [&](int64_t) { return g(rng); });
  fill(p.dt, {T, Dc}, [&](int64_t) { return 0.5 * g(rng); });
  fill(p.B, {T, p.bw()}, [&](int64_t) { return g(rng); });
  fill(p.C, {T, p.bw()}, [&](int64_t) { return g(rng); });
  fill(p.z, {T, Dc}, [&](int64_t) { return 2.0 * g(rng); });
  fill(p.states0, {p.batch, Dc * p.bw()}, [&](int64_t) { return 0.5 * g(rng); });
  return p;
}

inline ops::SelectiveScanWeights scan_weights(const SelectiveProblem& p) {
  return {p.A_log, p.complex ? &p.A_imag : nullptr, p.D, p.dt_bias};
}

}  // namespace mamba2::test
