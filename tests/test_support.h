// Helpers shared by the model and CLI tests: a float64 per-token reference of the Mamba2 LM
// written from DESIGN.md §1 (plain loops, independent of src/cpu and src/ops), weight
// perturbation, error metrics and running the CLI binary. File helpers (reads, writes, temp
// folders) are in test_files.h.
#pragma once
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "mamba2/config.h"
#include "model/weights.h"
#include "ops/ops.h"
#include "activations_as.h"
#include "test_files.h"

namespace mamba2::test {

// ||a - b|| / ||b|| (b is the reference).
template <class A, class B>
double rel_l2(const A* a, const B* b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num) / std::sqrt(den);
}

inline bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

// Decode state of one sequence in float64: per layer conv window (K-1 rows of conv_dim, oldest
// first) and SSM state (H, P, N).
struct RefState {
  std::vector<std::vector<double>> conv, ssm;
  RefState(const ModelConfig& c) {
    for (int64_t i = 0; i < c.n_layer; ++i) {
      conv.emplace_back(size_t((c.d_conv - 1) * c.conv_dim()), 0.0);
      ssm.emplace_back(size_t(c.nheads() * c.headdim * c.d_state), 0.0);
    }
  }
};

struct RefStats {
  int64_t dt_clamped_low = 0, dt_clamped_high = 0, dt_total = 0;
};

// One sequence through the per-token recurrence of DESIGN.md §1 in float64, continuing from
// `st`. Returns (ids.size(), V_pad) logits.
inline std::vector<double> reference_logits(const ModelConfig& c, const ModelWeights& w, std::span<const int32_t> ids,
                                            RefState& st, RefStats* stats = nullptr) {
  const int64_t D = c.d_model, V = c.vocab_padded(), DI = c.d_inner(), H = c.nheads(), P = c.headdim,
                N = c.d_state, G = c.ngroups, K = c.d_conv, CD = c.conv_dim(), DIP = c.d_in_proj();
  const double eps = c.norm_eps;
  const bool limit = c.has_dt_limit();
  std::vector<double> out(ids.size() * size_t(V));
  std::vector<double> residual(static_cast<size_t>(D)), h(static_cast<size_t>(D)), u(static_cast<size_t>(D)),
      zx(static_cast<size_t>(DIP)), xbc(static_cast<size_t>(CD)), y(static_cast<size_t>(DI));
  auto rmsnorm = [&](const double* in, const float* weight, double* o, int64_t n) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += in[i] * in[i];
    const double r = 1.0 / std::sqrt(ss / double(n) + eps);
    for (int64_t i = 0; i < n; ++i) o[i] = in[i] * r * double(weight[i]);
  };
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  for (size_t t = 0; t < ids.size(); ++t) {
    const float* e = w.embedding.data() + int64_t(ids[t]) * D;
    for (int64_t i = 0; i < D; ++i) h[size_t(i)] = e[i];
    for (int64_t li = 0; li < c.n_layer; ++li) {
      const LayerWeights& l = w.layers[size_t(li)];
      for (int64_t i = 0; i < D; ++i) residual[size_t(i)] = li == 0 ? h[size_t(i)] : residual[size_t(i)] + h[size_t(i)];
      rmsnorm(residual.data(), l.norm.data(), u.data(), D);
      for (int64_t r = 0; r < DIP; ++r) {
        double s = 0.0;
        const float* row = l.in_proj.data() + r * D;
        for (int64_t i = 0; i < D; ++i) s += double(row[i]) * u[size_t(i)];
        zx[size_t(r)] = s;
      }
      const double* z = zx.data();
      const double* xbc_in = zx.data() + DI;
      const double* dt_raw = zx.data() + DI + CD;
      std::vector<double>& cs = st.conv[size_t(li)];
      for (int64_t ch = 0; ch < CD; ++ch) {
        double s = double(l.conv_b.data()[ch]);
        const float* wk = l.conv_w.data() + ch * K;
        for (int64_t k = 0; k < K - 1; ++k) s += double(wk[k]) * cs[size_t(k * CD + ch)];
        s += double(wk[K - 1]) * xbc_in[ch];
        xbc[size_t(ch)] = silu(s);
      }
      for (int64_t k = 0; k + 1 < K - 1; ++k)
        for (int64_t ch = 0; ch < CD; ++ch) cs[size_t(k * CD + ch)] = cs[size_t((k + 1) * CD + ch)];
      if (K > 1)
        for (int64_t ch = 0; ch < CD; ++ch) cs[size_t((K - 2) * CD + ch)] = xbc_in[ch];
      const double* x = xbc.data();
      const double* Bm = xbc.data() + DI;
      const double* Cm = xbc.data() + DI + G * N;
      std::vector<double>& ss = st.ssm[size_t(li)];
      for (int64_t hh = 0; hh < H; ++hh) {
        const double v = dt_raw[hh] + double(l.dt_bias.data()[hh]);
        double dt = v > 20.0 ? v : std::log1p(std::exp(v));
        if (limit) {
          if (stats) {
            stats->dt_total++;
            if (dt < c.dt_limit_min) stats->dt_clamped_low++;
            if (dt > c.dt_limit_max) stats->dt_clamped_high++;
          }
          dt = std::clamp(dt, c.dt_limit_min, c.dt_limit_max);
        }
        const double A = -std::exp(double(l.A_log.data()[hh]));
        const double dA = std::exp(dt * A);
        const int64_t g = hh / (H / G);
        const double Dh = l.D.data()[hh];
        for (int64_t p = 0; p < P; ++p) {
          const double xv = x[hh * P + p];
          double* s = ss.data() + (hh * P + p) * N;
          double acc = 0.0;
          for (int64_t n = 0; n < N; ++n) {
            s[n] = dA * s[n] + dt * xv * Bm[g * N + n];
            acc += s[n] * Cm[g * N + n];
          }
          y[size_t(hh * P + p)] = acc + Dh * xv;
        }
      }
      for (int64_t i = 0; i < DI; ++i) y[size_t(i)] *= silu(z[i]);
      const int64_t gs = DI / G;
      for (int64_t g = 0; g < G; ++g) rmsnorm(y.data() + g * gs, l.gate_norm.data() + g * gs, y.data() + g * gs, gs);
      for (int64_t r = 0; r < D; ++r) {
        double s = 0.0;
        const float* row = l.out_proj.data() + r * DI;
        for (int64_t i = 0; i < DI; ++i) s += double(row[i]) * y[size_t(i)];
        h[size_t(r)] = s;
      }
    }
    std::vector<double> fin(static_cast<size_t>(D)), normed(static_cast<size_t>(D));
    for (int64_t i = 0; i < D; ++i) fin[size_t(i)] = residual[size_t(i)] + h[size_t(i)];
    rmsnorm(fin.data(), w.norm_f.data(), normed.data(), D);
    double* o = out.data() + t * size_t(V);
    for (int64_t v = 0; v < V; ++v) {
      double s = 0.0;
      const float* row = w.lm_head.data() + v * D;
      for (int64_t i = 0; i < D; ++i) s += double(row[i]) * normed[size_t(i)];
      o[v] = s;
    }
  }
  return out;
}

// Moves init_weights away from its constants so every term of the forward matters. The
// tensors are modified in place (lm_head shares the embedding's buffer, so it stays tied).
inline void perturb_weights(ModelWeights& w, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n01(0.0, 1.0);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  auto each = [](Tensor& t, auto f) {
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = float(f(t.data()[i]));
  };
  each(w.embedding, [&](float v) { return v * 25.0; });  // logits O(1)
  each(w.norm_f, [&](float) { return 1.0 + 0.2 * n01(rng); });
  for (LayerWeights& l : w.layers) {
    each(l.norm, [&](float) { return 1.0 + 0.2 * n01(rng); });
    each(l.gate_norm, [&](float) { return 1.0 + 0.2 * n01(rng); });
    each(l.D, [&](float) { return n01(rng); });
    each(l.conv_b, [&](float) { return 0.5 * n01(rng); });
    each(l.in_proj, [&](float v) { return 3.0 * v; });
    each(l.A_log, [&](float) { return std::log(0.05 + 20.0 * u01(rng)); });  // A in [-20, -0.05]
    each(l.dt_bias, [&](float) { return -4.0 + 4.0 * u01(rng); });
  }
}

// The 130m preset's layout at test size: 2 layers of width 32, 4 heads of 16, d_state 16,
// chunks of 16 (several chunks in a short prompt).
inline ModelConfig small_config(int64_t vocab, bool tied = true) {
  ModelConfig c = preset_config("130m");
  c.d_model = 32;
  c.n_layer = 2;
  c.d_state = 16;
  c.headdim = 16;
  c.chunk_size = 16;
  c.vocab_size = vocab;
  c.tie_embeddings = tied;
  return c;
}

// The training tests' tokenizers: a tiny BPE with EOS "</s>" and a split-only one without EOS.
inline const std::string kTinyEos = MAMBA2_FIXTURES_DIR "/tokenizer/tiny-bpe.json";
inline const std::string kTinyNoEos = MAMBA2_FIXTURES_DIR "/tokenizer/tiny-split.json";

// "5,17,3": integers as the CLI's list flags take them.
std::string comma_list(const auto& v) {
  std::string s;
  for (auto x : v) {
    if (!s.empty()) s += ',';
    s += std::to_string(x);
  }
  return s;
}

inline std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& v : ids) v = d(rng);
  return ids;
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) {
    if (ch == '\'') out += "'\\''";
    else out += ch;
  }
  return out + "'";
}
inline std::string shell_path(const std::filesystem::path& p) { return shell_quote(p.string()); }

struct CliResult {
  bool exited = false;  // false: killed by a signal
  int code = -1;
  std::string out, err;
};

// Runs the mamba2 binary with the given (already shell-quoted where needed) argument string,
// and `env` ("NAME=value ...") added to its environment. The model runs on the CPU unless `env`
// sets MAMBA2_DEVICE (the default would be the GPU on a machine that has one).
inline CliResult run_cli(const std::string& args, const std::string& env = "") {
  TempDir tmp;
  const std::string full_env = env.find("MAMBA2_DEVICE=") == std::string::npos ? "MAMBA2_DEVICE=cpu " + env : env;
  const char* cli = std::getenv("MAMBA2_CLI");  // a binary moved elsewhere (run-gpu-tests.sh --bin)
  const std::string cmd = "env " + full_env + " " + shell_quote(cli && *cli ? cli : MAMBA2_CLI) + " " + args + " > " + shell_quote((tmp / "out").string()) +
                          " 2> " + shell_quote((tmp / "err").string());
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.exited = status != -1 && WIFEXITED(status);
  r.code = r.exited ? WEXITSTATUS(status) : -1;
  r.out = read_file(tmp / "out");
  r.err = read_file(tmp / "err");
  return r;
}

// A clean refusal: exit code `code` (not a signal or a sanitizer report) and stderr naming
// every one of `needles`.
inline void expect_refusal(const CliResult& r, int code, std::initializer_list<std::string> needles) {
  ASSERT_TRUE(r.exited) << "killed by a signal; stderr: " << r.err;
  EXPECT_EQ(r.code, code) << "stderr: " << r.err;
  EXPECT_EQ(r.err.find("Sanitizer"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("runtime error"), std::string::npos) << r.err;
  for (const auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "stderr lacks '" << n << "': " << r.err;
}

}  // namespace mamba2::test
