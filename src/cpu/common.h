// Small numeric helpers shared by the CPU kernels. The float versions are the fast ones inference
// uses; the double overloads (plain libm) serve the kernels instantiated in double for the
// gradient checks. The derivatives used by the backward passes follow.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mamba2::cpu {

// exp(x) for x ≤ 0 in a form the compiler vectorises (libm's expf is a scalar call): Cody-Waite
// reduction to r in [-ln2/2, ln2/2] and a degree-6 polynomial, ≤ 2 ulp; 0 below -87. The result
// is formed before the select, and the library builds with -fno-trapping-math
// (src/CMakeLists.txt): every instruction set then vectorises it.
inline float exp_nonpos(float x) {
  const float xc = std::max(x, -87.0f);
#if defined(__x86_64__) && !defined(__SSE4_1__)
  // Baseline x86-64 (SSE2) has no vector rounding: x·log2 e rounded to nearest even by adding and
  // taking away 1.5·2²³, nearbyint's value for |x·log2 e| < 2²² (no FMA here to fuse the add).
  const float n = (xc * 1.44269504089f + 12582912.0f) - 12582912.0f;
#else
  const float n = std::nearbyint(xc * 1.44269504089f);
#endif
  const float r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float v = p * scale;
  return x < -87.0f ? 0.0f : v;
}
inline double exp_nonpos(double x) { return std::exp(x); }

// sin and cos of x in a form the compiler vectorises (libm's are scalar calls): x − k·π/2, π/2 in
// three parts (Cody-Waite), to r in [−π/4, π/4]; cephes' degree-7 sine and degree-8 cosine
// polynomials on r; then the quadrant k mod 4 swaps and signs them. ≤ 2 ulp against the exact
// values for |x| up to a few thousand (the complex scan's angles δ·Im A stay far below).
inline void sin_cos(float x, float& s, float& c) {
#if defined(__x86_64__) && !defined(__SSE4_1__)
  const float k = (x * 0.636619772f + 12582912.0f) - 12582912.0f;  // as exp_nonpos rounds
#else
  const float k = std::nearbyint(x * 0.636619772f);
#endif
  const float r = ((x - k * 1.5703125f) - k * 4.837512969970703125e-4f) - k * 7.54978995489188216e-8f;
  const float z = r * r;
  const float sp = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float cp = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                   0.5f * z + 1.0f;
  const int32_t q = int32_t(k);
  const float ss = (q & 1) ? cp : sp, cc = (q & 1) ? sp : cp;
  s = (q & 2) ? -ss : ss;
  c = ((q + 1) & 2) ? -cc : cc;
}
inline void sin_cos(double x, double& s, double& c) {
  s = std::sin(x);
  c = std::cos(x);
}

// sigmoid(v) through e = exp(-|v|) ∈ (0, 1], so that it vectorises and never overflows.
template <class T>
inline T sigmoid(T v) {
  const T e = exp_nonpos(-std::fabs(v));
  const T r = T(1) / (T(1) + e);
  return v >= T(0) ? r : e * r;
}
// silu(v) = v·sigmoid(v).
inline float silu(float v) { return v * sigmoid(v); }
inline double silu(double v) { return v / (1.0 + std::exp(-v)); }

// log(1 + w) for w ∈ [0, 1]: w·Q(w), Q the degree-8 minimax fit of log1p(w)/w on [0, 1] (relative
// error 3e-8; ~2e-7 evaluated in fp32), scripts/fit_log1p.py, as the GPU's log1p_unit. Vectorises
// where libm's log1pf is a scalar call.
inline float log1p_unit(float w) {
  float q = 5.232695490e-03f;
  q = q * w - 2.950524352e-02f;
  q = q * w + 7.822595537e-02f;
  q = q * w - 1.366324574e-01f;
  q = q * w + 1.910600662e-01f;
  q = q * w - 2.484298199e-01f;
  q = q * w + 3.331909776e-01f;
  q = q * w - 4.999949336e-01f;
  q = q * w + 9.999999404e-01f;
  return w * q;
}
// softplus as torch.nn.functional.softplus (threshold 20): max(v, 0) + log(1 + e^−|v|), the same
// function as log1p(e^v), from our exp and log1p alone (it vectorises, and its bits follow this
// code rather than the libm glibc picks for the CPU).
inline float softplus(float v) { return v > 20.0f ? v : std::max(v, 0.0f) + log1p_unit(exp_nonpos(-std::fabs(v))); }
// The same by libm: the double softplus, and Mamba2's dt in float (its bits as they were).
template <class T>
inline T softplus_libm(T v) {
  return v > T(20) ? v : std::log1p(std::exp(v));
}
inline double softplus(double v) { return softplus_libm(v); }
// softplus' = sigmoid (1 above the threshold).
template <class T>
inline T softplus_grad(T v) {
  return v > T(20) ? T(1) : sigmoid(v);
}

// softplus as torch.nn.functional.softplus (threshold 20), then the dt_limit clamp.
template <class T>
inline T dt_activation(T raw, T bias, T lo, T hi) {
  return std::clamp(softplus_libm(raw + bias), lo, hi);
}

// silu'(v) = s·(1 + v·(1 - s)), s = sigmoid(v), with the same exp(-|v|) form.
template <class T>
inline T silu_grad(T v) {
  const T s = sigmoid(v);
  return s * (T(1) + v * (T(1) - s));
}

// d dt / d raw of dt_activation: softplus' = sigmoid (1 above the threshold), times 0 where the
// clamp binds (as torch.clamp: the gradient passes where lo ≤ softplus ≤ hi).
template <class T>
inline T dt_activation_grad(T raw, T bias, T lo, T hi) {
  const T v = raw + bias;
  const T sp = softplus_libm(v);
  if (sp < lo || sp > hi) return T(0);
  return softplus_grad(v);
}

}  // namespace mamba2::cpu
