// The Mamba-1 selective scan (ops::selective_scan, ops::selective_scan_step) against a float64
// recurrence written here from its definition (ops.h; mamba_ssm's selective_scan_ref), real and
// complex, over packed sequences continuing from states in other slots, operands contiguous or
// column slices of wider matrices; and its promises: the same bits alone or batched, with 1 or 2
// threads, and by the step (alone or in a decode batch) as by the scan. The backward (real
// and complex) against central differences in double, and the fp32 op against the double kernel.
#include <gtest/gtest.h>
#include <omp.h>

#include <complex>
#include <cstring>
#include <limits>
#include <random>

#include "cpu/kernels.h"
#include "ops/ops.h"
#include "selective_scan_problem.h"
#include "test_files.h"
#include "test_support.h"

namespace mamba2 {
namespace {

using cd = std::complex<double>;

// The float64 recurrence: y (T, Dc) and the final states (batch, Dc·bw), from the fp32 inputs.
void reference(const test::SelectiveProblem& p, std::vector<double>& y, std::vector<double>& states) {
  const int64_t Dc = p.Dc, N = p.N, bw = p.bw();
  y.assign(size_t(p.T() * Dc), 0.0);
  states.assign(p.states0.data(), p.states0.data() + p.states0.numel());
  int64_t t0 = 0;
  for (size_t s = 0; s < p.lengths.size(); ++s) {
    double* st = states.data() + p.slots[s] * Dc * bw;
    for (int64_t d = 0; d < Dc; ++d) {
      std::vector<cd> h(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n)
        h[size_t(n)] = p.complex ? cd(st[d * bw + 2 * n], st[d * bw + 2 * n + 1]) : cd(st[d * bw + n], 0.0);
      for (int64_t t = t0; t < t0 + p.lengths[s]; ++t) {
        const double v = double(p.dt.data()[t * Dc + d]) + double(p.dt_bias.data()[d]);
        const double delta = v > 20.0 ? v : std::log1p(std::exp(v));
        const double xv = p.x.data()[t * Dc + d];
        cd acc = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const cd A(-std::exp(double(p.A_log.data()[d * N + n])), p.complex ? double(p.A_imag.data()[d * N + n]) : 0.0);
          const float* Bt = p.B.data() + t * bw;
          const float* Ct = p.C.data() + t * bw;
          const cd Bn = p.complex ? cd(Bt[2 * n], Bt[2 * n + 1]) : cd(Bt[n], 0.0);
          const cd Cn = p.complex ? cd(Ct[2 * n], Ct[2 * n + 1]) : cd(Ct[n], 0.0);
          h[size_t(n)] = std::exp(delta * A) * h[size_t(n)] + delta * Bn * xv;
          acc += Cn * h[size_t(n)];
        }
        double out = (p.complex ? 2.0 * acc.real() : acc.real()) + double(p.D.data()[d]) * xv;
        if (p.gated) {
          const double zv = p.z.data()[t * Dc + d];
          out *= zv / (1.0 + std::exp(-zv));
        }
        y[size_t(t * Dc + d)] = out;
      }
      for (int64_t n = 0; n < N; ++n) {
        if (p.complex) {
          st[d * bw + 2 * n] = h[size_t(n)].real();
          st[d * bw + 2 * n + 1] = h[size_t(n)].imag();
        } else {
          st[d * bw + n] = h[size_t(n)].real();
        }
      }
    }
    t0 += p.lengths[s];
  }
}

// The scan of all of p's sequences at once: y and the states after.
void run_scan(test::SelectiveProblem& p, Tensor& y, Tensor& states) {
  y = Tensor::empty({p.T(), p.Dc});
  states = p.states0.to(Device::CPU, DType::F32);
  const ops::SeqBatch seqs(p.lengths, p.slots, 16, Device::CPU);
  ops::selective_scan(test::scan_weights(p), MatView::of(p.x), MatView::of(p.dt), MatView::of(p.B), MatView::of(p.C),
                      p.gated ? MatView::of(p.z) : MatView{}, MatView::of(y), MatView::of(states), seqs);
}

double rel_l2(const float* a, const double* b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

struct Variant {
  bool complex, gated;
  int64_t Dc, N;
};

void PrintTo(const Variant& v, std::ostream* os) {
  *os << (v.complex ? "complex" : "real") << (v.gated ? " gated" : "") << " D " << v.Dc << " N " << v.N;
}

class SelectiveScan : public ::testing::TestWithParam<Variant> {};

// fp32 against float64: each step rounds h once or twice per element (relative 2⁻²⁴) and the errors
// of ≤ 64 steps add at most linearly while exp(δA) ≤ 1 damps the older ones, so ≲ 64·1e-7 ≈ 6e-6
// at worst; 1e-5 relative L2 per sequence.
TEST_P(SelectiveScan, MatchesFloat64Recurrence) {
  const Variant v = GetParam();
  test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {1, 2, 7, 33, 64}, 11);
  Tensor y, states;
  run_scan(p, y, states);
  std::vector<double> want_y, want_states;
  reference(p, want_y, want_states);
  int64_t t0 = 0;
  for (size_t s = 0; s < p.lengths.size(); ++s) {
    const size_t off = size_t(t0 * p.Dc), n = size_t(p.lengths[s] * p.Dc);
    EXPECT_LE(rel_l2(y.data() + off, want_y.data() + off, n), 1e-5) << "y of sequence " << s;
    const int64_t w = p.Dc * p.bw();
    EXPECT_LE(rel_l2(states.data() + p.slots[s] * w, want_states.data() + p.slots[s] * w, size_t(w)), 1e-5)
        << "final state of sequence " << s;
    t0 += p.lengths[s];
  }
  // Rows no sequence uses are left as they were.
  const int64_t w = p.Dc * p.bw();
  EXPECT_EQ(std::memcmp(states.data(), p.states0.data(), size_t(2 * w) * sizeof(float)), 0);
}

// Each sequence alone (its own state row) gives the bits it gives packed with the others; 1 or 2
// threads give the same bits; and the token-by-token step gives the scan's bits.
TEST_P(SelectiveScan, SameBitsAloneBatchedThreadedAndStepped) {
  const Variant v = GetParam();
  test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {3, 17, 40}, 5);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  Tensor y, states;
  run_scan(p, y, states);
  omp_set_num_threads(1);
  Tensor y1, states1;
  run_scan(p, y1, states1);
  omp_set_num_threads(threads);
  EXPECT_EQ(std::memcmp(y.data(), y1.data(), size_t(y.numel()) * sizeof(float)), 0) << "1 thread";
  EXPECT_EQ(std::memcmp(states.data(), states1.data(), size_t(states.numel()) * sizeof(float)), 0) << "1 thread";

  const int64_t Dc = p.Dc, bw = p.bw();
  const auto w = test::scan_weights(p);
  int64_t t0 = 0;
  for (size_t s = 0; s < p.lengths.size(); ++s) {
    const int64_t L = p.lengths[s], slot = p.slots[s];
    const std::vector<int64_t> len{L}, one_slot{0};
    Tensor st = Tensor::empty({1, Dc * bw}), ya = Tensor::empty({L, Dc});
    std::memcpy(st.data(), p.states0.data() + slot * Dc * bw, size_t(Dc * bw) * sizeof(float));
    const MatView rows_x = MatView::of(p.x).rows_slice(t0, L), rows_dt = MatView::of(p.dt).rows_slice(t0, L);
    const MatView rows_B = MatView::of(p.B).rows_slice(t0, L), rows_C = MatView::of(p.C).rows_slice(t0, L);
    const MatView rows_z = p.gated ? MatView::of(p.z).rows_slice(t0, L) : MatView{};
    ops::selective_scan(w, rows_x, rows_dt, rows_B, rows_C, rows_z, MatView::of(ya), MatView::of(st),
                        ops::SeqBatch(len, one_slot, 16, Device::CPU));
    EXPECT_EQ(std::memcmp(ya.data(), y.data() + t0 * Dc, size_t(L * Dc) * sizeof(float)), 0) << "alone " << s;
    EXPECT_EQ(std::memcmp(st.data(), states.data() + slot * Dc * bw, size_t(Dc * bw) * sizeof(float)), 0)
        << "alone, state " << s;
    // Token by token from the same initial state.
    std::memcpy(st.data(), p.states0.data() + slot * Dc * bw, size_t(Dc * bw) * sizeof(float));
    Tensor ys = Tensor::empty({1, Dc});
    const ops::SeqBatch step = ops::SeqBatch::decode(one_slot, Device::CPU);
    for (int64_t t = 0; t < L; ++t) {
      ops::selective_scan_step(w, rows_x.rows_slice(t, 1), rows_dt.rows_slice(t, 1), rows_B.rows_slice(t, 1),
                               rows_C.rows_slice(t, 1), p.gated ? rows_z.rows_slice(t, 1) : MatView{},
                               MatView::of(ys), MatView::of(st), step);
      ASSERT_EQ(std::memcmp(ys.data(), y.data() + (t0 + t) * Dc, size_t(Dc) * sizeof(float)), 0)
          << "step " << t << " of sequence " << s;
    }
    EXPECT_EQ(std::memcmp(st.data(), states.data() + slot * Dc * bw, size_t(Dc * bw) * sizeof(float)), 0)
        << "stepped, state " << s;
    t0 += L;
  }
}

// A copy of t's columns inside a wider matrix: the view of them has ld > cols (the model's x, z,
// dt, B and C are column slices of the projections' outputs). The other columns hold NaN, so
// that a kernel reading past its columns shows.
struct Strided {
  Tensor wide;
  MatView view;
  Strided(const Tensor& t, int64_t before, int64_t after) {
    const int64_t rows = t.dim(0), cols = t.numel() / rows;
    wide = Tensor::empty({rows, before + cols + after});
    std::fill(wide.data(), wide.data() + wide.numel(), std::numeric_limits<float>::quiet_NaN());
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(wide.data() + r * (before + cols + after) + before, t.data() + r * cols, size_t(cols) * sizeof(float));
    view = MatView::of(wide).cols_slice(before, cols);
  }
};

// Sequences longer than the kernel's tiles of tokens, every operand a column slice of a wider matrix
// (y too): the float64 recurrence within 1e-5 (the older steps' rounding errors decay with
// exp(δA) ≤ 1, so 130 steps do not add more than 64 do in practice), the same bits as from
// contiguous operands, and the same bits again from decode steps with all the sequences in one
// decode batch (each step the sequences that still have a token, in slots that are not in order).
TEST_P(SelectiveScan, LongStridedAndDecodeBatch) {
  const Variant v = GetParam();
  test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {130, 1, 65, 7}, 31);
  Tensor y, states;
  run_scan(p, y, states);
  std::vector<double> want_y, want_states;
  reference(p, want_y, want_states);
  const int64_t Dc = p.Dc, w = p.Dc * p.bw();
  int64_t t0 = 0;
  for (size_t s = 0; s < p.lengths.size(); ++s) {
    const size_t off = size_t(t0 * Dc), n = size_t(p.lengths[s] * Dc);
    EXPECT_LE(rel_l2(y.data() + off, want_y.data() + off, n), 1e-5) << "y of sequence " << s;
    EXPECT_LE(rel_l2(states.data() + p.slots[s] * w, want_states.data() + p.slots[s] * w, size_t(w)), 1e-5)
        << "final state of sequence " << s;
    t0 += p.lengths[s];
  }

  const Strided x(p.x, 3, 2 * Dc + 1), dt(p.dt, 2 * Dc + 5, 7), B(p.B, 1, p.bw() + 3), C(p.C, p.bw() + 2, 1),
      z(p.z, Dc, Dc);
  Tensor ywide = Tensor::zeros({p.T(), 2 * Dc + 3});
  const MatView ys = MatView::of(ywide).cols_slice(Dc + 1, Dc);
  Tensor st = p.states0.to(Device::CPU, DType::F32);
  ops::selective_scan(test::scan_weights(p), x.view, dt.view, B.view, C.view, p.gated ? z.view : MatView{}, ys, MatView::of(st),
                      ops::SeqBatch(p.lengths, p.slots, 16, Device::CPU));
  for (int64_t t = 0; t < p.T(); ++t) {
    ASSERT_EQ(std::memcmp(ys.row(t), y.data() + t * Dc, size_t(Dc) * sizeof(float)), 0) << "strided, row " << t;
    for (int64_t c = 0; c < ywide.dim(1); ++c)  // nothing written beside y's columns
      if (c <= Dc || c > 2 * Dc) {
        ASSERT_EQ(ywide.data()[t * ywide.dim(1) + c], 0.0f) << "row " << t << ", column " << c;
      }
  }
  EXPECT_EQ(std::memcmp(st.data(), states.data(), st.nbytes()), 0) << "strided, states";

  // Decode: step k takes token k of each sequence longer than k.
  st = p.states0.to(Device::CPU, DType::F32);
  std::vector<int64_t> starts{0};
  for (int64_t L : p.lengths) starts.push_back(starts.back() + L);
  for (int64_t k = 0;; ++k) {
    std::vector<int64_t> rows, slots;
    for (size_t s = 0; s < p.lengths.size(); ++s)
      if (k < p.lengths[s]) rows.push_back(starts[s] + k), slots.push_back(p.slots[s]);
    if (rows.empty()) break;
    const int64_t nb = int64_t(rows.size());
    auto gather = [&](const Tensor& t) {
      const int64_t cols = t.numel() / t.dim(0);
      Tensor g = Tensor::empty({nb, cols});
      for (int64_t b = 0; b < nb; ++b)
        std::memcpy(g.data() + b * cols, t.data() + rows[size_t(b)] * cols, size_t(cols) * sizeof(float));
      return g;
    };
    Tensor xb = gather(p.x), dtb = gather(p.dt), Bb = gather(p.B), Cb = gather(p.C), zb = gather(p.z);
    Tensor yb = Tensor::empty({nb, Dc});
    ops::selective_scan_step(test::scan_weights(p), MatView::of(xb), MatView::of(dtb), MatView::of(Bb), MatView::of(Cb),
                             p.gated ? MatView::of(zb) : MatView{}, MatView::of(yb), MatView::of(st),
                             ops::SeqBatch::decode(slots, Device::CPU));
    for (int64_t b = 0; b < nb; ++b)
      ASSERT_EQ(std::memcmp(yb.data() + b * Dc, y.data() + rows[size_t(b)] * Dc, size_t(Dc) * sizeof(float)), 0)
          << "decode step " << k << ", row " << b;
  }
  EXPECT_EQ(std::memcmp(st.data(), states.data(), st.nbytes()), 0) << "decoded, states";
}

INSTANTIATE_TEST_SUITE_P(Variants, SelectiveScan,
                         ::testing::Values(Variant{false, false, 37, 16}, Variant{false, true, 37, 5},
                                           Variant{true, false, 37, 16}, Variant{true, true, 20, 5},
                                           Variant{false, true, 37, 33}, Variant{true, true, 37, 33}),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           return std::string(info.param.complex ? "Complex" : "Real") +
                                  (info.param.gated ? "Gated" : "") + "N" + std::to_string(info.param.N);
                         });

// ---- Backward ----

// A problem's tensors in double, flat, and the loss Σ y·wy + Σ final·ws of its scan in double.
struct Problem64 {
  const test::SelectiveProblem& p;
  std::vector<double> A_log, A_imag, D, dt_bias, x, dt, B, C, z, states0, wy, ws;
  explicit Problem64(const test::SelectiveProblem& q) : p(q) {
    auto of = [](const Tensor& t) { return std::vector<double>(t.data(), t.data() + t.numel()); };
    A_log = of(p.A_log), D = of(p.D), dt_bias = of(p.dt_bias), x = of(p.x), dt = of(p.dt), B = of(p.B);
    C = of(p.C), z = of(p.z), states0 = of(p.states0);
    if (p.complex) A_imag = of(p.A_imag);
    std::mt19937_64 rng(99);
    std::normal_distribution<double> g(0.0, 1.0);
    wy.resize(x.size());
    ws.resize(states0.size());
    for (double& v : wy) v = g(rng);
    for (double& v : ws) v = g(rng);
  }
  cpu::SelectiveScanParamsT<double> params() const {
    return {p.Dc, p.N, A_log.data(), p.complex ? A_imag.data() : nullptr, D.data(), dt_bias.data()};
  }
  double loss() const {
    std::vector<double> y(x.size()), st = states0;
    int64_t t0 = 0;
    for (size_t s = 0; s < p.lengths.size(); ++s) {
      const int64_t Dc = p.Dc, bw = p.bw();
      cpu::selective_scan_forward(params(), x.data() + t0 * Dc, Dc, dt.data() + t0 * Dc, Dc, B.data() + t0 * bw, bw,
                                  C.data() + t0 * bw, bw, p.gated ? z.data() + t0 * Dc : nullptr, Dc,
                                  y.data() + t0 * Dc, Dc, st.data() + p.slots[s] * Dc * bw, p.lengths[s]);
      t0 += p.lengths[s];
    }
    double l = 0.0;
    for (size_t i = 0; i < y.size(); ++i) l += y[i] * wy[i];
    for (int64_t s : p.slots)
      for (int64_t i = 0; i < p.Dc * p.bw(); ++i) l += st[size_t(s * p.Dc * p.bw() + i)] * ws[size_t(s * p.Dc * p.bw() + i)];
    return l;
  }
};

struct Grads64 {
  std::vector<double> x, dt, B, C, z, state0, A_log, A_imag, D, dt_bias;
};

// The analytic gradients of Problem64::loss by the double kernel.
Grads64 backward64(const Problem64& q) {
  const test::SelectiveProblem& p = q.p;
  const int64_t Dc = p.Dc, bw = p.bw();
  Grads64 g{std::vector<double>(q.x.size()), std::vector<double>(q.x.size()), std::vector<double>(q.B.size()),
            std::vector<double>(q.C.size()), std::vector<double>(q.x.size()), std::vector<double>(q.states0.size()),
            std::vector<double>(q.A_log.size()), std::vector<double>(q.A_log.size()), std::vector<double>(q.D.size()),
            std::vector<double>(q.D.size())};
  int64_t t0 = 0;
  for (size_t s = 0; s < p.lengths.size(); ++s) {
    const int64_t slot = p.slots[s];
    const cpu::SelectiveScanGradsT<double> gr{g.x.data() + t0 * Dc, Dc, g.dt.data() + t0 * Dc, Dc,
                                              g.B.data() + t0 * bw, bw, g.C.data() + t0 * bw, bw,
                                              g.z.data() + t0 * Dc, Dc, g.state0.data() + slot * Dc * bw,
                                              g.A_log.data(), g.A_imag.data(), g.D.data(), g.dt_bias.data()};
    cpu::selective_scan_backward(q.params(), q.x.data() + t0 * Dc, Dc, q.dt.data() + t0 * Dc, Dc,
                                 q.B.data() + t0 * bw, bw, q.C.data() + t0 * bw, bw,
                                 p.gated ? q.z.data() + t0 * Dc : nullptr, Dc, q.states0.data() + slot * Dc * bw,
                                 q.wy.data() + t0 * Dc, Dc, q.ws.data() + slot * Dc * bw, gr, p.lengths[s]);
    t0 += p.lengths[s];
  }
  return g;
}

double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den == 0.0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Every gradient of the double kernel against central differences of the loss (step 1e-6: the
// truncation error is O(1e-12) and the rounding of the loss ~1e-16/1e-6 = 1e-10): relative L2
// ≤ 1e-6 per tensor.
TEST_P(SelectiveScan, BackwardMatchesFiniteDifferences) {
  const Variant v = GetParam();
  test::SelectiveProblem p = test::make_selective_problem(5, v.N == 16 ? 3 : 2, v.complex, v.gated, {1, 4, 6}, 21);
  Problem64 q(p);
  const Grads64 g = backward64(q);
  auto numeric = [&](std::vector<double>& param) {
    std::vector<double> out(param.size());
    for (size_t i = 0; i < param.size(); ++i) {
      const double keep = param[i], h = 1e-6;
      param[i] = keep + h;
      const double up = q.loss();
      param[i] = keep - h;
      const double down = q.loss();
      param[i] = keep;
      out[i] = (up - down) / (2 * h);
    }
    return out;
  };
  using Pair = std::pair<const char*, std::pair<std::vector<double>*, const std::vector<double>*>>;
  std::vector<Pair> checks = {{"x", {&q.x, &g.x}},         {"dt", {&q.dt, &g.dt}}, {"B", {&q.B, &g.B}},
                              {"C", {&q.C, &g.C}},         {"A_log", {&q.A_log, &g.A_log}},
                              {"D", {&q.D, &g.D}},         {"dt_bias", {&q.dt_bias, &g.dt_bias}}};
  if (v.gated) checks.push_back({"z", {&q.z, &g.z}});
  if (v.complex) checks.push_back({"A_imag", {&q.A_imag, &g.A_imag}});
  for (auto& [name, pr] : checks) EXPECT_LE(rel_l2(*pr.second, numeric(*pr.first)), 1e-6) << name;
  // The initial states: only the slots' rows exist for the loss.
  const std::vector<double> ds = numeric(q.states0);
  for (int64_t s : p.slots) {
    const size_t w = size_t(p.Dc * p.bw()), off = size_t(s) * w;
    const std::vector<double> got(g.state0.begin() + off, g.state0.begin() + off + w);
    const std::vector<double> want(ds.begin() + off, ds.begin() + off + w);
    EXPECT_LE(rel_l2(got, want), 1e-6) << "state0 of slot " << s;
  }
}

// The op (fp32) against the double kernel: relative L2 ≤ 1e-5 per tensor (fp32 recurrences of ≤ 40
// steps, as the forward's bound); 1 and 2 threads the same bits.
TEST_P(SelectiveScan, BackwardOpMatchesDoubleAndIsDeterministic) {
  const Variant v = GetParam();
  test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {3, 17, 40}, 8);
  Problem64 q(p);
  const Grads64 want = backward64(q);
  auto tensor = [](const std::vector<double>& d, Shape shape) {
    Tensor t = Tensor::empty(shape);
    for (size_t i = 0; i < d.size(); ++i) t.data()[i] = float(d[i]);
    return t;
  };
  Tensor dy = tensor(q.wy, {p.T(), p.Dc}), dsf = tensor(q.ws, {p.batch, p.Dc * p.bw()});
  auto run = [&](std::vector<Tensor>& out) {
    out = {Tensor::zeros({p.T(), p.Dc}), Tensor::zeros({p.T(), p.Dc}), Tensor::zeros({p.T(), p.bw()}),
           Tensor::zeros({p.T(), p.bw()}),  Tensor::zeros({p.T(), p.Dc}), Tensor::zeros({p.batch, p.Dc * p.bw()}),
           Tensor::zeros({p.Dc, p.N}),      Tensor::zeros({p.Dc, p.N}),   Tensor::zeros({p.Dc}),
           Tensor::zeros({p.Dc})};
    const ops::SelectiveScanGrads g{MatView::of(out[0]), MatView::of(out[1]), MatView::of(out[2]),
                                    MatView::of(out[3]), MatView::of(out[4]), MatView::of(out[5]),
                                    out[6], p.complex ? &out[7] : nullptr, out[8], out[9]};
    ops::selective_scan_backward(test::scan_weights(p), MatView::of(p.x), MatView::of(p.dt), MatView::of(p.B), MatView::of(p.C),
                                 p.gated ? MatView::of(p.z) : MatView{}, MatView::of(p.states0), MatView::of(dy),
                                 MatView::of(dsf), g, ops::SeqBatch(p.lengths, p.slots, 16, Device::CPU));
  };
  std::vector<Tensor> got, again;
  run(got);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  run(again);
  omp_set_num_threads(threads);
  const std::vector<std::pair<const char*, const std::vector<double>*>> names = {
      {"x", &want.x}, {"dt", &want.dt}, {"B", &want.B}, {"C", &want.C}, {"z", &want.z}, {"state0", &want.state0},
      {"A_log", &want.A_log}, {"A_imag", &want.A_imag}, {"D", &want.D}, {"dt_bias", &want.dt_bias}};
  for (size_t i = 0; i < names.size(); ++i) {
    if ((i == 4 && !p.gated) || (i == 7 && !p.complex)) continue;
    const std::vector<double> ours(got[i].data(), got[i].data() + got[i].numel());
    EXPECT_LE(rel_l2(ours, *names[i].second), 1e-5) << names[i].first;
    EXPECT_EQ(std::memcmp(got[i].data(), again[i].data(), got[i].nbytes()), 0) << names[i].first << ", 1 thread";
  }
}

TEST(SelectiveScanErrors, RefusesBadShapesByName) {
  test::SelectiveProblem p = test::make_selective_problem(12, 4, true, true, {3, 2}, 1);
  test::SelectiveProblem r = test::make_selective_problem(12, 4, false, false, {3, 2}, 1);
  Tensor y = Tensor::empty({5, 12});
  const ops::SeqBatch seqs(p.lengths, p.slots, 16, Device::CPU);
  auto error = [&](const ops::SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView states) {
    return test::error_message([&] { ops::selective_scan(w, x, dt, B, C, {}, MatView::of(y), states, seqs); });
  };
  const MatView st = MatView::of(const_cast<Tensor&>(p.states0));
  // Real B and C (N wide) with a complex A.
  std::string e = error(test::scan_weights(p), MatView::of(p.x), MatView::of(p.dt), MatView::of(r.B), MatView::of(r.C), st);
  EXPECT_NE(e.find("[selective_scan] B"), std::string::npos) << e;
  // dt with fewer rows than x.
  e = error(test::scan_weights(p), MatView::of(p.x), MatView::of(p.dt).rows_slice(0, 4), MatView::of(p.B), MatView::of(p.C), st);
  EXPECT_NE(e.find("[selective_scan] dt"), std::string::npos) << e;
  // A complex state width for a real scan.
  e = error(test::scan_weights(r), MatView::of(r.x), MatView::of(r.dt), MatView::of(r.B), MatView::of(r.C), st);
  EXPECT_NE(e.find("[selective_scan] states"), std::string::npos) << e;
  // A_imag of another shape.
  const Tensor wrong = Tensor::zeros({12, 5});
  e = error({p.A_log, &wrong, p.D, p.dt_bias}, MatView::of(p.x), MatView::of(p.dt), MatView::of(p.B), MatView::of(p.C),
            st);
  EXPECT_NE(e.find("[selective_scan] A_imag"), std::string::npos) << e;
  // A_log not a matrix, and A_log for fewer channels than x has.
  const Tensor flat = Tensor::zeros({12 * 4});
  e = error({flat, nullptr, r.D, r.dt_bias}, MatView::of(r.x), MatView::of(r.dt), MatView::of(r.B), MatView::of(r.C),
            MatView::of(const_cast<Tensor&>(r.states0)));
  EXPECT_NE(e.find("[selective_scan] A_log"), std::string::npos) << e;
  const Tensor narrow = Tensor::zeros({11, 4});
  e = error({narrow, nullptr, r.D, r.dt_bias}, MatView::of(r.x), MatView::of(r.dt), MatView::of(r.B),
            MatView::of(r.C), MatView::of(const_cast<Tensor&>(r.states0)));
  EXPECT_NE(e.find("[selective_scan]"), std::string::npos) << e;
  // D of the wrong length.
  const Tensor shortD = Tensor::zeros({11});
  e = error({p.A_log, &p.A_imag, shortD, p.dt_bias}, MatView::of(p.x), MatView::of(p.dt), MatView::of(p.B),
            MatView::of(p.C), st);
  EXPECT_NE(e.find("[selective_scan] D"), std::string::npos) << e;
  // A decode step with two tokens for one sequence.
  const std::vector<int64_t> one{0};
  e = test::error_message([&] {
    ops::selective_scan_step(test::scan_weights(p), MatView::of(p.x).rows_slice(0, 2), MatView::of(p.dt).rows_slice(0, 2),
                             MatView::of(p.B).rows_slice(0, 2), MatView::of(p.C).rows_slice(0, 2), {},
                             MatView::of(y).rows_slice(0, 2), st, ops::SeqBatch::decode(one, Device::CPU));
  });
  EXPECT_NE(e.find("[selective_scan]"), std::string::npos) << e;
  // Checkpoints on the CPU (the GPU backward's), by name.
  Tensor ck = Tensor::zeros({4, 12 * 4});
  e = test::error_message([&] {
    ops::selective_scan(test::scan_weights(r), MatView::of(r.x), MatView::of(r.dt), MatView::of(r.B), MatView::of(r.C),
                        {}, MatView::of(y), MatView::of(const_cast<Tensor&>(r.states0)), seqs, MatView::of(ck));
  });
  EXPECT_NE(e.find("[selective_scan] checkpoints"), std::string::npos) << e;
}

}  // namespace
}  // namespace mamba2
