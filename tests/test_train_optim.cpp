// The optimiser: AdamW against a hand-written double-precision reference (bias correction, weight
// decay, gradient scale), the parameter groups, global-norm clipping, the schedule, and the
// thread-count independence of the gradient norm.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <numbers>
#include <random>
#include <set>

#include "cpu/kernels.h"
#include "cuda_test_support.h"
#include "model/mamba2_grad.h"
#include "model/weights.h"
#include "ops/ops.h"
#include "test_files.h"
#include "train/optimizer.h"

namespace mamba2 {
namespace {

using training::AdamWOptimizer;

// torch.optim.AdamW's update written from its documentation, in double:
//   p ← p − lr·wd·p; m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
//   p ← p − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps)
struct RefAdamW {
  double lr, b1, b2, eps, wd;
  std::vector<double> p, m, v;
  int t = 0;
  void step(const std::vector<double>& g) {
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] -= lr * wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

std::vector<std::vector<double>> gradient_sequence(size_t n, int steps) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<std::vector<double>> gs(static_cast<size_t>(steps), std::vector<double>(n));
  for (auto& g : gs)
    for (size_t i = 0; i < n; ++i) g[i] = i % 7 == 0 ? 0.0 : nd(rng) * std::pow(10.0, double(int(i % 5) - 3));
  return gs;
}

// The fp32 op (as training uses it) follows the reference to fp32 rounding: |Δp| ≤ 1e-6 for
// parameters O(1) after 5 steps of lr 1e-2 (a few ulps of 1.2e-7 per step).
TEST(AdamW, FloatOpMatchesDoubleReference) {
  const size_t n = 1000;
  const auto gs = gradient_sequence(n, 5);
  for (double wd : {0.0, 0.1}) {
    RefAdamW ref{1e-2, 0.9, 0.95, 1e-8, wd, {}, std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
    Tensor p = Tensor::empty({int64_t(n)}), g = Tensor::empty({int64_t(n)});
    Tensor m = Tensor::zeros({int64_t(n)}), v = Tensor::zeros({int64_t(n)});
    for (size_t i = 0; i < n; ++i) {
      p.data()[i] = float(std::sin(double(i)));
      ref.p.push_back(double(p.data()[i]));
    }
    for (int t = 1; t <= 5; ++t) {
      // The op gets the gradient halved and grad_scale 2: the scale is applied before the moments.
      for (size_t i = 0; i < n; ++i) g.data()[i] = float(gs[size_t(t - 1)][i] * 0.5);
      std::vector<double> gd(n);
      for (size_t i = 0; i < n; ++i) gd[i] = double(g.data()[i]) * 2.0;
      ops::adamw(p, g, m, v, {1e-2, 0.9, 0.95, 1e-8, wd, t, 2.0});
      ref.step(gd);
    }
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(double(p.data()[i]) - ref.p[i]));
    EXPECT_LE(worst, 1e-6) << "weight_decay " << wd;
    std::printf("AdamW fp32 vs double reference, weight_decay %g: max abs error %.2e\n", wd, worst);
  }
}

// The kernel in double is the same arithmetic: equal to the reference to 1e-13 (rounding only).
TEST(AdamW, DoubleKernelMatchesReference) {
  const size_t n = 257;
  const auto gs = gradient_sequence(n, 4);
  RefAdamW ref{3e-3, 0.8, 0.99, 1e-6, 0.2, std::vector<double>(n, 0.5), std::vector<double>(n, 0.0),
               std::vector<double>(n, 0.0)};
  std::vector<double> p(n, 0.5), m(n, 0.0), v(n, 0.0);
  for (int t = 1; t <= 4; ++t) {
    const cpu::AdamWScalars<double> s{0.8, 0.2, 0.99, 0.01, 1e-6, 1 - 3e-3 * 0.2, 3e-3 / (1 - std::pow(0.8, t)),
                                      1 / std::sqrt(1 - std::pow(0.99, t)), 1.0};
    cpu::adamw_step(p.data(), gs[size_t(t - 1)].data(), m.data(), v.data(), int64_t(n), s);
    ref.step(gs[size_t(t - 1)]);
  }
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(p[i], ref.p[i], 1e-13) << i;
}

// Bias correction at step 1: the first update is lr · g / (|g| + eps) — lr·sign(g) for |g| ≫ eps.
TEST(AdamW, FirstStepIsLrTimesSign) {
  Tensor p = Tensor::zeros({3}), g = Tensor::empty({3}), m = Tensor::zeros({3}), v = Tensor::zeros({3});
  g.data()[0] = 2.0f;
  g.data()[1] = -1e-3f;
  g.data()[2] = 0.0f;
  ops::adamw(p, g, m, v, {0.1, 0.9, 0.999, 1e-8, 0.0, 1, 1.0});
  EXPECT_NEAR(p.data()[0], -0.1f, 1e-7);
  EXPECT_NEAR(p.data()[1], 0.1 * 1e-3 / (1e-3 + 1e-8), 1e-8);  // eps shows at |g| = 1e-3
  EXPECT_EQ(p.data()[2], 0.0f);
}

// Many parameters in one call (the optimiser's step), decay only where asked: the bits of one
// call each, with weight_decay 0 for the rest.
TEST(AdamW, ManyParametersAtOnceEqualOneAtATime) {
  std::vector<Tensor> p, g, m, v, p1, m1, v1;
  for (int64_t len : {1, 7, 300}) {
    const uint64_t seed = uint64_t(len);
    p.push_back(test::random_tensor({len}, seed)), g.push_back(test::random_tensor({len}, seed + 1));
    m.push_back(test::random_tensor({len}, seed + 2, -0.1f, 0.1f));
    v.push_back(test::random_tensor({len}, seed + 3, 0.0f, 0.01f));
    p1.push_back(p.back().to(Device::CPU, DType::F32)), m1.push_back(m.back().to(Device::CPU, DType::F32));
    v1.push_back(v.back().to(Device::CPU, DType::F32));
  }
  const ops::AdamW h{3e-3, 0.9, 0.95, 1e-8, 0.1, 3, 0.5};
  std::vector<ops::AdamWParam> group;
  for (size_t i = 0; i < p.size(); ++i) {
    group.push_back({&p[i], &g[i], &m[i], &v[i], i != 1});
    ops::AdamW hi = h;
    if (i == 1) hi.weight_decay = 0.0;
    ops::adamw(p1[i], g[i], m1[i], v1[i], hi);
  }
  ops::adamw(group, h);
  for (size_t i = 0; i < p.size(); ++i)
    EXPECT_TRUE(test::same_bits(p[i], p1[i]) && test::same_bits(m[i], m1[i]) && test::same_bits(v[i], v1[i])) << i;
}

TEST(AdamW, RefusesBadHyperParameters) {
  Tensor p = Tensor::zeros({2}), g = Tensor::zeros({2}), m = Tensor::zeros({2}), v = Tensor::zeros({3});
  EXPECT_NE(test::error_message([&] { ops::adamw(p, g, m, v, {}); }).find("[adamw] v has 3 elements"),
            std::string::npos);
  Tensor v2 = Tensor::zeros({2});
  EXPECT_NE(test::error_message([&] { ops::adamw(p, g, m, v2, {1e-3, 1.0, 0.9, 1e-8, 0.0, 1, 1.0}); }).find("beta1"),
            std::string::npos);
  EXPECT_NE(test::error_message([&] { ops::adamw(p, g, m, v2, {1e-3, 0.9, 0.9, 1e-8, 0.0, 0, 1.0}); }).find("step"),
            std::string::npos);
}

ModelConfig tiny_config(bool tied) {
  ModelConfig c = preset_config("130m");
  c.d_model = 16;
  c.n_layer = 2;
  c.d_state = 8;
  c.headdim = 8;
  c.chunk_size = 8;
  c.vocab_size = 40;
  c.tie_embeddings = tied;
  return c;
}

// Weight decay reaches exactly the matrices (rank ≥ 2): with zero gradients the moments stay 0,
// the Adam step is 0, and only decay moves a weight, by the factor 1 − lr·wd.
TEST(AdamW, DecayOnlyOnMatrices) {
  for (bool tied : {true, false}) {
    const ModelConfig c = tiny_config(tied);
    ModelWeights w = init_weights(c, 3);
    Gradients g = make_gradients(w);
    AdamWOptimizer opt(w, g, c, {0.9, 0.95, 1e-8, 0.5});
    std::set<std::string> decayed;
    std::vector<std::vector<float>> before;
    for (const auto& p : opt.params()) {
      if (p.decay) decayed.insert(p.name);
      before.emplace_back(p.value->data(), p.value->data() + p.value->numel());
    }
    std::set<std::string> expected = {"backbone.embeddings.weight"};
    if (!tied) expected.insert("lm_head.weight");
    for (int i = 0; i < 2; ++i)
      for (const char* s : {"in_proj.weight", "out_proj.weight", "conv1d.weight"})
        expected.insert(fmt::format("backbone.layers.{}.mixer.{}", i, s));
    EXPECT_EQ(decayed, expected);
    EXPECT_EQ(opt.params().size(), size_t(2 * 9 + 2 + (tied ? 0 : 1)));  // a tied head once

    opt.step(0.1, 1.0);
    const float factor = float(1.0 - 0.1 * 0.5);
    for (size_t k = 0; k < opt.params().size(); ++k) {
      const auto& p = opt.params()[k];
      for (int64_t i = 0; i < p.value->numel(); ++i) {
        const float want = p.decay ? before[k][size_t(i)] * factor : before[k][size_t(i)];
        ASSERT_EQ(p.value->data()[i], want) << p.name << " " << i;
      }
    }
  }
}

// The global norm covers every gradient once (a tied head is the embedding), in double.
TEST(Clipping, GlobalNormAndCoefficient) {
  const ModelConfig c = tiny_config(true);
  ModelWeights w = init_weights(c, 4);
  Gradients g = make_gradients(w);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> nd(0.0, 1.0);
  double ref = 0.0;
  for (const auto& nt : hf_named_tensors(g, c))
    for (int64_t i = 0; i < nt.tensor->numel(); ++i) {
      const float v = float(nd(rng));
      const_cast<float*>(nt.tensor->data())[i] = v;
      ref += double(v) * double(v);
    }
  AdamWOptimizer opt(w, g, c, {});
  EXPECT_NEAR(opt.grad_sum_squares(), ref, 1e-12 * ref);
  const double norm = std::sqrt(ref);
  // torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6), only when the norm exceeds it.
  EXPECT_DOUBLE_EQ(training::clip_coefficient(norm, 1.0), 1.0 / (norm + 1e-6));
  EXPECT_DOUBLE_EQ(training::clip_coefficient(norm, 2 * norm), 1.0);
  EXPECT_DOUBLE_EQ(training::clip_coefficient(norm, 0.0), 1.0);
  // Clipped: the update is that of the scaled gradient.
  opt.scale_grads(0.5);
  EXPECT_NEAR(opt.grad_sum_squares(), ref * 0.25, 1e-6 * ref);
}

TEST(Clipping, SumOfSquaresDoesNotDependOnThreads) {
  std::vector<float> x(300001);
  std::mt19937_64 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& v : x) v = nd(rng);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = cpu::sum_squares(x.data(), int64_t(x.size()));
  omp_set_num_threads(3);
  const double three = cpu::sum_squares(x.data(), int64_t(x.size()));
  omp_set_num_threads(saved);
  EXPECT_EQ(one, three);
}

TEST(Schedule, WarmupThenCosine) {
  using training::schedule_lr;
  // Warmup 10 to lr 1, cosine to 0.1 at step 110.
  EXPECT_DOUBLE_EQ(schedule_lr(0, 110, 10, 1.0, 0.1, "cosine"), 0.1);
  EXPECT_DOUBLE_EQ(schedule_lr(4, 110, 10, 1.0, 0.1, "cosine"), 0.5);
  EXPECT_DOUBLE_EQ(schedule_lr(9, 110, 10, 1.0, 0.1, "cosine"), 1.0);
  EXPECT_DOUBLE_EQ(schedule_lr(10, 110, 10, 1.0, 0.1, "cosine"), 1.0);
  EXPECT_NEAR(schedule_lr(60, 110, 10, 1.0, 0.1, "cosine"), 0.55, 1e-15);
  EXPECT_NEAR(schedule_lr(35, 110, 10, 1.0, 0.1, "cosine"), 0.1 + 0.45 * (1 + std::cos(std::numbers::pi / 4)), 1e-15);
  EXPECT_NEAR(schedule_lr(110, 110, 10, 1.0, 0.1, "cosine"), 0.1, 1e-15);
  EXPECT_NEAR(schedule_lr(500, 110, 10, 1.0, 0.1, "cosine"), 0.1, 1e-15);
  // No warmup: the first step at lr.
  EXPECT_DOUBLE_EQ(schedule_lr(0, 100, 0, 3e-4, 3e-5, "cosine"), 3e-4);
  EXPECT_DOUBLE_EQ(schedule_lr(50, 100, 5, 2.0, 0.0, "constant"), 2.0);
  EXPECT_DOUBLE_EQ(schedule_lr(2, 100, 5, 2.0, 0.0, "constant"), 1.2);
  // Warmup as long as the run: no division by zero.
  EXPECT_DOUBLE_EQ(schedule_lr(10, 10, 10, 1.0, 0.1, "cosine"), 1.0);
}

}  // namespace
}  // namespace mamba2
