// Gradient checks of every op's backward kernel, in double, against central finite differences
// of its forward kernel (both instantiated for double). Each check takes a random upstream
// gradient R and the objective f = Σ R∘outputs, so that the backward's results are ∂f/∂inputs.
//
// Tolerance: relative L2 error ≤ 1e-6 per tensor. With h = 1e-5 the central difference has a
// truncation error ~h²·|f'''|/6 ≈ 1e-11 and a rounding error ~1e-16·|f|/h ≈ 1e-11 (relative,
// for the O(1) values used here), so a correct backward lands near 1e-9; a missing term, a wrong
// sign or an index slip shows at 1e-3 or more.
//
// Conventions checked on the way: parameter-gradient buffers start from random values and must
// come back increased by the gradient (+=); activation-gradient buffers start as NaN and must be
// overwritten everywhere they belong to the op (column slices with a row stride larger than the
// width check that nothing outside the slice is touched).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace mamba2 {
namespace {

using Vec = std::vector<double>;
constexpr double kTol = 1e-6;
constexpr double kStep = 1e-5;
const double kNaN64 = std::numeric_limits<double>::quiet_NaN();

Vec randn(size_t n, std::mt19937_64& rng, double scale = 1.0, double mean = 0.0) {
  std::normal_distribution<double> d(mean, scale);
  Vec v(n);
  for (double& x : v) x = d(rng);
  return v;
}

Vec uniform(size_t n, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  Vec v(n);
  for (double& x : v) x = d(rng);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

Vec minus(const Vec& a, const Vec& b) {
  Vec r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] - b[i];
  return r;
}

// Central differences of f over the elements of `value` selected by `use` (all when empty).
Vec numeric_grad(const std::function<double()>& f, Vec& value, const std::function<bool(size_t)>& use = {}) {
  Vec g(value.size(), 0.0);
  for (size_t i = 0; i < value.size(); ++i) {
    if (use && !use(i)) continue;
    const double v = value[i];
    value[i] = v + kStep;
    const double fp = f();
    value[i] = v - kStep;
    const double fm = f();
    value[i] = v;
    g[i] = (fp - fm) / (2 * kStep);
  }
  return g;
}

// ||analytic - numeric|| / ||numeric|| over the selected elements; the numeric gradient must not
// vanish (a check of zeros against zeros proves nothing).
double rel_error(const Vec& analytic, const Vec& numeric, const std::function<bool(size_t)>& use = {}) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < numeric.size(); ++i) {
    if (use && !use(i)) continue;
    num += (analytic[i] - numeric[i]) * (analytic[i] - numeric[i]);
    den += numeric[i] * numeric[i];
  }
  EXPECT_GT(den, 1e-12) << "the numeric gradient vanishes";
  return std::sqrt(num / den);
}

void expect_close(const std::string& what, double err) {
  std::printf("[grad-check] %-40s rel L2 error %.2e\n", what.c_str(), err);
  EXPECT_LE(err, kTol) << what;
}

void check(const std::string& what, const std::function<double()>& f, Vec& value, const Vec& analytic,
           const std::function<bool(size_t)>& use = {}) {
  expect_close(what, rel_error(analytic, numeric_grad(f, value, use), use));
}

TEST(GradOps, ScalarDerivatives) {
  // silu' and the dt activation's derivative against central differences of the double forms,
  // across the sign change, the softplus threshold (20) and far tails.
  for (double v : {-30.0, -5.0, -0.7, -1e-3, 0.0, 0.4, 3.0, 19.0, 25.0}) {
    const double fd = (cpu::silu(v + kStep) - cpu::silu(v - kStep)) / (2 * kStep);
    EXPECT_NEAR(cpu::silu_grad(v), fd, 1e-9 * std::max(1.0, std::fabs(fd))) << v;
    const double inf = std::numeric_limits<double>::infinity();
    const double dfd = (cpu::dt_activation(v + kStep, 0.0, 0.0, inf) - cpu::dt_activation(v - kStep, 0.0, 0.0, inf)) /
                       (2 * kStep);
    EXPECT_NEAR(cpu::dt_activation_grad(v, 0.0, 0.0, inf), dfd, 1e-9) << v;
  }
  // Clamped: zero gradient on both sides, the softplus derivative inside.
  EXPECT_EQ(cpu::dt_activation_grad(-3.0, 0.0, 0.1, 1.0), 0.0);  // softplus(-3) ≈ 0.049 < 0.1
  EXPECT_EQ(cpu::dt_activation_grad(2.0, 0.0, 0.1, 1.0), 0.0);   // softplus(2) ≈ 2.13 > 1
  EXPECT_NEAR(cpu::dt_activation_grad(-1.0, 0.5, 0.1, 1.0), 1.0 / (1.0 + std::exp(0.5)), 1e-15);
  // The float forms agree with the double ones.
  for (float v : {-9.0f, -0.5f, 0.0f, 0.8f, 7.0f}) EXPECT_NEAR(cpu::silu_grad(v), cpu::silu_grad(double(v)), 1e-6);
}

// Mamba-1's δ: the float softplus (our exp and a degree-8 log1p polynomial) against libm's
// log1p(exp(v)) in double over [−40, 20] and past the threshold: within 5e-7 relative (measured
// 2.8e-7, ~2 ulp: the exp's 2 ulp and the polynomial's 2e-7, with or without FMA contraction);
// its derivative against central differences of the double form, and the float one within 5e-7.
TEST(GradOps, Softplus) {
  double worst = 0.0, worst_grad = 0.0;
  for (int i = 0; i <= 200000; ++i) {
    const float v = -40.0f + 70.0f * float(i) / 200000.0f;
    const double ref = v > 20.0f ? double(v) : std::log1p(std::exp(double(v)));
    worst = std::max(worst, std::fabs(double(cpu::softplus(v)) - ref) / ref);
    const double g = cpu::softplus_grad(double(v));
    worst_grad = std::max(worst_grad, std::fabs(double(cpu::softplus_grad(v)) - g) / g);
  }
  EXPECT_LE(worst, 5e-7);
  EXPECT_LE(worst_grad, 5e-7);
  for (double v : {-30.0, -5.0, -0.7, 0.0, 0.4, 3.0, 19.0}) {
    const double fd = (cpu::softplus(v + kStep) - cpu::softplus(v - kStep)) / (2 * kStep);
    EXPECT_NEAR(cpu::softplus_grad(v), fd, 1e-9) << v;
  }
  EXPECT_EQ(cpu::softplus(25.0f), 25.0f);
  EXPECT_EQ(cpu::softplus_grad(25.0f), 1.0f);
}

TEST(GradOps, Embedding) {
  std::mt19937_64 rng(1);
  const int64_t V = 7, d = 5;
  const std::vector<int32_t> ids = {3, 0, 3, 6, 1, 3};  // repeats must add up
  const int64_t n = int64_t(ids.size());
  Vec table = randn(size_t(V * d), rng), R = randn(size_t(n * d), rng);
  auto f = [&] {
    Vec out(size_t(n * d));
    cpu::embedding_forward(table.data(), d, ids.data(), n, out.data());
    return dot(R, out);
  };
  const Vec pre = randn(table.size(), rng);
  Vec g = pre;
  cpu::embedding_backward(ids.data(), n, R.data(), g.data(), d);
  check("embedding: table", f, table, minus(g, pre));
}

TEST(GradOps, AddRmsnormWithResidual) {
  std::mt19937_64 rng(2);
  const int64_t n = 4, d = 6;
  const double eps = 1e-5;
  Vec res = randn(size_t(n * d), rng), h = randn(size_t(n * d), rng), w = randn(size_t(d), rng, 0.3, 1.0);
  // R: gradient of out; Rr: gradient of the updated residual from its later uses.
  const Vec R = randn(size_t(n * d), rng), Rr = randn(size_t(n * d), rng);
  auto f = [&] {
    Vec r = res, out(size_t(n * d));
    cpu::add_rmsnorm_forward(r.data(), h.data(), r.data(), w.data(), out.data(), n, d, eps);
    return dot(R, out) + dot(Rr, r);
  };
  Vec r = res, out(size_t(n * d));
  cpu::add_rmsnorm_forward(r.data(), h.data(), r.data(), w.data(), out.data(), n, d, eps);
  Vec d_res = Rr;
  const Vec pre = randn(size_t(d), rng);
  Vec dw = pre;
  cpu::add_rmsnorm_backward(r.data(), w.data(), R.data(), d_res.data(), dw.data(), n, d, eps);
  check("add_rmsnorm: residual", f, res, d_res);
  check("add_rmsnorm: h", f, h, d_res);
  check("add_rmsnorm: weight", f, w, minus(dw, pre));
}

TEST(GradOps, GatedRmsnormGroups) {
  std::mt19937_64 rng(3);
  const int64_t n = 3, d = 8, G = 2, ld = d + 3;
  const double eps = 1e-5;
  Vec y = randn(size_t(n * ld), rng), z = randn(size_t(n * ld), rng, 1.5), w = randn(size_t(d), rng, 0.3, 1.0);
  const Vec R = randn(size_t(n * ld), rng);
  auto in_row = [&](size_t i) { return int64_t(i) % ld < d; };
  auto f = [&] {
    Vec out(size_t(n * ld), 0.0);
    cpu::gated_rmsnorm_forward(y.data(), ld, z.data(), ld, w.data(), out.data(), ld, n, d, G, eps);
    return dot(R, out);
  };
  Vec dy(size_t(n * ld), kNaN64), dz(size_t(n * ld), kNaN64);
  const Vec pre = randn(size_t(d), rng);
  Vec dw = pre;
  cpu::gated_rmsnorm_backward(y.data(), ld, z.data(), ld, w.data(), R.data(), ld, dy.data(), ld, dz.data(), ld,
                              dw.data(), n, d, G, eps);
  for (size_t i = 0; i < dy.size(); ++i) {
    EXPECT_EQ(std::isnan(dy[i]), !in_row(i)) << i;
    EXPECT_EQ(std::isnan(dz[i]), !in_row(i)) << i;
  }
  check("gated_rmsnorm (G=2): y", f, y, dy, in_row);
  check("gated_rmsnorm (G=2): z", f, z, dz, in_row);
  check("gated_rmsnorm (G=2): weight", f, w, minus(dw, pre));
}

TEST(GradOps, Linear) {
  std::mt19937_64 rng(4);
  const int64_t m = 5, k = 4, n = 3, ldx = 6, ldy = 7;
  Vec x = randn(size_t(m * ldx), rng), W = randn(size_t(n * k), rng);
  const Vec R = randn(size_t(m * ldy), rng);
  auto in_x = [&](size_t i) { return int64_t(i) % ldx < k; };
  auto f = [&] {
    Vec y(size_t(m * ldy), 0.0);
    cpu::linear_gemm(x.data(), ldx, W.data(), y.data(), ldy, m, n, k);
    double s = 0.0;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) s += R[size_t(r * ldy + c)] * y[size_t(r * ldy + c)];
    return s;
  };
  Vec dx(size_t(m * ldx), kNaN64);
  const Vec pre = randn(W.size(), rng);
  Vec dW = pre;
  cpu::linear_backward(x.data(), ldx, W.data(), R.data(), ldy, dx.data(), ldx, dW.data(), m, n, k);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_EQ(std::isnan(dx[i]), !in_x(i)) << i;
  check("linear: x", f, x, dx, in_x);
  check("linear: W", f, W, minus(dW, pre));
  // add_dx: the same d_x added onto what was there (the slice only; the rest untouched).
  const Vec dx_pre = randn(dx.size(), rng);
  Vec dx_added = dx_pre;
  cpu::linear_backward(x.data(), ldx, W.data(), R.data(), ldy, dx_added.data(), ldx, dW.data(), m, n, k, true);
  for (size_t i = 0; i < dx.size(); ++i)
    EXPECT_NEAR(dx_added[i], in_x(i) ? dx_pre[i] + dx[i] : dx_pre[i], 1e-12) << i;
}

// The conv from a given state (continuing a sequence) and from zeros (a fresh one), including a
// sequence shorter than the kernel.
void conv_check(int64_t L, bool with_state, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t C = 5, K = 4, ld = 8;
  Vec in = randn(size_t(L * ld), rng), w = randn(size_t(C * K), rng, 0.5), b = randn(size_t(C), rng, 0.5);
  Vec state = with_state ? randn(size_t((K - 1) * C), rng) : Vec(size_t((K - 1) * C), 0.0);
  const Vec R = randn(size_t(L * ld), rng);
  auto in_row = [&](size_t i) { return int64_t(i) % ld < C; };
  auto f = [&] {
    Vec out(size_t(L * ld), 0.0), st = state;
    cpu::causal_conv1d_forward(in.data(), ld, w.data(), b.data(), out.data(), ld, st.data(), L, C, K);
    return dot(R, out);
  };
  Vec din(size_t(L * ld), kNaN64);
  const Vec pre_w = randn(w.size(), rng), pre_b = randn(b.size(), rng);
  Vec dw = pre_w, db = pre_b;
  cpu::causal_conv1d_backward(in.data(), ld, w.data(), b.data(), with_state ? state.data() : nullptr, R.data(), ld,
                              din.data(), ld, dw.data(), db.data(), L, C, K);
  for (size_t i = 0; i < din.size(); ++i) EXPECT_EQ(std::isnan(din[i]), !in_row(i)) << i;
  const std::string tag = "causal_conv1d L=" + std::to_string(L) + (with_state ? " +state" : " fresh") + ": ";
  check(tag + "in", f, in, din, in_row);
  check(tag + "weight", f, w, minus(dw, pre_w));
  check(tag + "bias", f, b, minus(db, pre_b));
}

TEST(GradOps, CausalConvFresh) { conv_check(9, false, 5); }
TEST(GradOps, CausalConvFromState) { conv_check(9, true, 6); }
TEST(GradOps, CausalConvShorterThanKernel) { conv_check(2, true, 7); }

TEST(GradOps, CrossEntropy) {
  std::mt19937_64 rng(8);
  const int64_t n = 4, V = 9, ld = 11;
  const std::vector<int32_t> targets = {2, 8, 0, 2};
  Vec logits = randn(size_t(n * ld), rng, 2.0);
  auto in_row = [&](size_t i) { return int64_t(i) % ld < V; };
  auto f = [&] { return cpu::cross_entropy(logits.data(), ld, targets.data(), n, V, (double*)nullptr, ld, 1.0); };
  const double scale = 0.37;
  Vec d(size_t(n * ld), kNaN64);
  const double loss = cpu::cross_entropy(logits.data(), ld, targets.data(), n, V, d.data(), ld, scale);
  EXPECT_DOUBLE_EQ(loss, f());
  for (size_t i = 0; i < d.size(); ++i) {
    EXPECT_EQ(std::isnan(d[i]), !in_row(i)) << i;
    d[i] /= scale;
  }
  check("cross_entropy: logits", f, logits, d, in_row);

  // In place, and safe for huge logits (the row max is subtracted): loss = lse - target logit.
  Vec big = {1000.0, 1001.0, 999.0};
  const int32_t t = 1;
  const double expect = std::log(std::exp(-1.0) + 1.0 + std::exp(-2.0));
  const double l = cpu::cross_entropy(big.data(), 3, &t, 1, 3, big.data(), 3, 1.0);
  EXPECT_NEAR(l, expect, 1e-12);
  EXPECT_NEAR(big[0] + big[1] + big[2], 0.0, 1e-12);  // softmax − onehot sums to 0
  EXPECT_LT(big[1], 0.0);
  std::vector<float> bigf = {1000.0f, 1001.0f, 999.0f};
  EXPECT_NEAR(cpu::cross_entropy(bigf.data(), 3, &t, 1, 3, bigf.data(), 3, 1.0f), expect, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// SSD scan: x | B | C | dt packed as column slices of one buffer (as in in_proj's output, with a
// spare column), several chunks with a partial last one, an initial state and a gradient on the
// final state (state passing in both directions), ngroups > 1, and the dt_limit clamp.

struct SsdCase {
  int64_t H, P, N, G, L, Q;
  double dt_min = 0.0, dt_max = std::numeric_limits<double>::infinity();
  uint64_t seed = 9;
};

struct SsdProblem {
  SsdCase c;
  int64_t HP, GN, W;  // W: packed row width
  Vec in, state0, dt_bias, A_log, D, R, Rs;
  explicit SsdProblem(const SsdCase& cs) : c(cs) {
    std::mt19937_64 rng(c.seed);
    HP = c.H * c.P;
    GN = c.G * c.N;
    W = HP + 2 * GN + c.H + 1;
    in = randn(size_t(c.L * W), rng, 0.7);
    for (int64_t t = 0; t < c.L; ++t)  // raw dt: softplus(raw + bias) spans ~0.05 .. 2
      for (int64_t h = 0; h < c.H; ++h) in[size_t(t * W + HP + 2 * GN + h)] = randn(1, rng, 1.2)[0];
    state0 = randn(size_t(c.H * c.P * c.N), rng, 0.5);
    dt_bias = uniform(size_t(c.H), rng, -1.0, 0.0);
    A_log = uniform(size_t(c.H), rng, std::log(0.3), std::log(2.0));
    D = randn(size_t(c.H), rng);
    R = randn(size_t(c.L * HP), rng);
    Rs = randn(state0.size(), rng);
  }
  cpu::SsdParamsT<double> params() const {
    return {c.H, c.P, c.G, c.N, dt_bias.data(), A_log.data(), D.data(), c.dt_min, c.dt_max};
  }
  const double* x() const { return in.data(); }
  const double* B() const { return in.data() + HP; }
  const double* C() const { return in.data() + HP + GN; }
  const double* dt() const { return in.data() + HP + 2 * GN; }
  double objective(int64_t Q) const {
    Vec y(size_t(c.L * HP)), st = state0;
    cpu::ssd_scan_forward(params(), x(), W, B(), W, C(), W, dt(), W, y.data(), HP, st.data(), c.L, Q);
    return dot(R, y) + dot(Rs, st);
  }
  struct Grads {
    Vec in, state0, dt_bias, A_log, D;
  };
  // Parameter gradients returned net of the random values their buffers started with.
  Grads backward(int64_t Q) const {
    std::mt19937_64 rng(c.seed + 1);
    Grads g{Vec(in.size(), kNaN64), Vec(state0.size(), kNaN64), randn(size_t(c.H), rng), randn(size_t(c.H), rng),
            randn(size_t(c.H), rng)};
    const Grads pre = g;
    const cpu::SsdGradsT<double> out{g.in.data(),          W, g.in.data() + HP, W, g.in.data() + HP + GN, W,
                                     g.in.data() + HP + 2 * GN, W, g.state0.data(), g.dt_bias.data(),
                                     g.A_log.data(),       g.D.data()};
    cpu::ssd_scan_backward(params(), x(), W, B(), W, C(), W, dt(), W, state0.data(), R.data(), HP, Rs.data(), out,
                           c.L, Q);
    g.dt_bias = minus(g.dt_bias, pre.dt_bias);
    g.A_log = minus(g.A_log, pre.A_log);
    g.D = minus(g.D, pre.D);
    return g;
  }
};

void ssd_check(const SsdCase& c, const std::string& tag) {
  SsdProblem pb(c);
  const SsdProblem::Grads g = pb.backward(c.Q);
  auto f = [&] { return pb.objective(c.Q); };
  const int64_t W = pb.W, HP = pb.HP, GN = pb.GN;
  for (size_t i = 0; i < g.in.size(); ++i) EXPECT_EQ(std::isnan(g.in[i]), int64_t(i) % W == W - 1) << i;
  const Vec num = numeric_grad(f, pb.in, [&](size_t i) { return int64_t(i) % W < W - 1; });
  auto cols = [&](int64_t lo, int64_t hi) {
    return [=](size_t i) { return int64_t(i) % W >= lo && int64_t(i) % W < hi; };
  };
  expect_close(tag + ": x", rel_error(g.in, num, cols(0, HP)));
  expect_close(tag + ": B", rel_error(g.in, num, cols(HP, HP + GN)));
  expect_close(tag + ": C", rel_error(g.in, num, cols(HP + GN, HP + 2 * GN)));
  expect_close(tag + ": dt", rel_error(g.in, num, cols(HP + 2 * GN, W - 1)));
  check(tag + ": initial state", f, pb.state0, g.state0);
  check(tag + ": dt_bias", f, pb.dt_bias, g.dt_bias);
  check(tag + ": A_log", f, pb.A_log, g.A_log);
  check(tag + ": D", f, pb.D, g.D);

  // The chunking changes only the summation order: one chunk, the case's chunks and one token per
  // chunk give the same gradients (double: 1e-12 relative).
  for (int64_t q : {c.L, int64_t(1)}) {
    const SsdProblem::Grads o = pb.backward(q);
    auto all = [&](size_t i) { return int64_t(i) % W < W - 1; };
    EXPECT_LE(rel_error(o.in, g.in, all), 1e-12) << tag << " chunk " << q;
    EXPECT_LE(rel_error(o.state0, g.state0), 1e-12) << tag << " chunk " << q;
    EXPECT_LE(rel_error(o.A_log, g.A_log), 1e-12) << tag << " chunk " << q;
    EXPECT_LE(rel_error(o.dt_bias, g.dt_bias), 1e-12) << tag << " chunk " << q;
  }
}

TEST(GradOps, SsdScanChunksStateGroups) {
  // 11 tokens in chunks of 4 (4, 4, 3); 4 heads in 2 groups of 2.
  ssd_check({.H = 4, .P = 3, .N = 5, .G = 2, .L = 11, .Q = 4}, "ssd_scan G=2 Q=4 L=11");
}

TEST(GradOps, SsdScanOneGroupManyHeads) {
  ssd_check({.H = 3, .P = 2, .N = 4, .G = 1, .L = 9, .Q = 3, .seed = 10}, "ssd_scan G=1 Q=3 L=9");
}

TEST(GradOps, SsdScanDtLimitBinding) {
  const SsdCase c{.H = 4, .P = 2, .N = 3, .G = 4, .L = 10, .Q = 4, .dt_min = 0.2, .dt_max = 0.9, .seed = 11};
  // The clamp must bind on both sides for this check to mean anything.
  SsdProblem pb(c);
  int low = 0, high = 0;
  for (int64_t t = 0; t < c.L; ++t)
    for (int64_t h = 0; h < c.H; ++h) {
      const double v = pb.dt()[t * pb.W + h] + pb.dt_bias[size_t(h)];
      const double sp = std::log1p(std::exp(v));
      low += sp < c.dt_min;
      high += sp > c.dt_max;
    }
  std::printf("[grad-check] dt_limit case: %d of %lld dt clamped low, %d high\n", low, (long long)(c.L * c.H), high);
  ASSERT_GT(low, 0);
  ASSERT_GT(high, 0);
  ssd_check(c, "ssd_scan dt_limit G=4 Q=4 L=10");
  // Clamped positions get exactly zero gradient.
  const SsdProblem::Grads g = pb.backward(c.Q);
  for (int64_t t = 0; t < c.L; ++t)
    for (int64_t h = 0; h < c.H; ++h) {
      const double sp = std::log1p(std::exp(pb.dt()[t * pb.W + h] + pb.dt_bias[size_t(h)]));
      if (sp < c.dt_min || sp > c.dt_max) {
        EXPECT_EQ(g.in[size_t(t * pb.W + pb.HP + 2 * pb.GN + h)], 0.0);
      }
    }
}

}  // namespace
}  // namespace mamba2
