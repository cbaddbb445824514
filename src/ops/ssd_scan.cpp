#include <utility>

#include "cpu/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

namespace {

cpu::SsdParams params(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, int64_t rows) {
  const int64_t H = w.dt_bias.numel();
  if (w.headdim <= 0 || w.ngroups <= 0 || w.d_state <= 0 || H % w.ngroups != 0)
    fail("[ssd_scan] {} heads do not split into {} groups", H, w.ngroups);
  check_len("ssd_scan", "A_log", w.A_log, H);
  check_len("ssd_scan", "D", w.D, H);
  check_shape("ssd_scan", "x", x, rows, H * w.headdim);
  check_shape("ssd_scan", "B", B, rows, w.ngroups * w.d_state);
  check_shape("ssd_scan", "C", C, rows, w.ngroups * w.d_state);
  check_shape("ssd_scan", "dt", dt, rows, H);
  return {H, w.headdim, w.ngroups, w.d_state, w.dt_bias.data(), w.A_log.data(), w.D.data(), float(w.dt_min),
          float(w.dt_max)};
}

}  // namespace

void ssd_scan(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y, MatView state,
              int64_t chunk_size) {
  const auto p = params(w, x, B, C, dt, x.rows);
  check_shape("ssd_scan", "y", y, x.rows, x.cols);
  check_shape("ssd_scan", "state", state, p.nheads, p.headdim * p.d_state);
  if (state.ld != state.cols) fail("[ssd_scan] state must be contiguous");
  if (chunk_size <= 0) fail("[ssd_scan] chunk_size must be positive, got {}", chunk_size);
  if (x.rows == 0) return;
  cpu::ssd_scan_forward(p, x.data, x.ld, B.data, B.ld, C.data, C.ld, dt.data, dt.ld, y.data, y.ld, state.data, x.rows,
                        chunk_size);
}

void ssd_step(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y, MatView states,
              std::span<const int64_t> slots) {
  const auto p = params(w, x, B, C, dt, x.rows);
  check_shape("ssd_scan", "y", y, x.rows, x.cols);
  check_shape("ssd_scan", "states", states, states.rows, p.nheads * p.headdim * p.d_state);
  if (states.ld != states.cols) fail("[ssd_scan] states must be contiguous");
  if (int64_t(slots.size()) != x.rows) fail("[ssd_scan] {} slots for {} tokens", slots.size(), x.rows);
  for (int64_t s : slots)
    if (s < 0 || s >= states.rows) fail("[ssd_scan] slot {} outside the {} states", s, states.rows);
  cpu::ssd_step(p, x.data, x.ld, B.data, B.ld, C.data, C.ld, dt.data, dt.ld, y.data, y.ld, states.data,
                slots.data(), x.rows);
}

void ssd_scan_backward(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView state0, MatView d_y,
                       MatView d_state_final, const SsdGrads& g, int64_t chunk_size) {
  const int64_t L = x.rows;
  const auto p = params(w, x, B, C, dt, L);
  const int64_t S = p.headdim * p.d_state;
  check_shape("ssd_scan", "d_y", d_y, L, x.cols);
  check_shape("ssd_scan", "d_x", g.x, L, x.cols);
  check_shape("ssd_scan", "d_B", g.B, L, B.cols);
  check_shape("ssd_scan", "d_C", g.C, L, C.cols);
  check_shape("ssd_scan", "d_dt", g.dt, L, dt.cols);
  for (const auto& [what, m] : {std::pair{"state0", state0}, {"d_state_final", d_state_final}, {"d_state0", g.state0}}) {
    if (!m.data) continue;
    check_shape("ssd_scan", what, m, p.nheads, S);
    if (m.ld != S) fail("[ssd_scan] {} must be contiguous", what);
  }
  check_len("ssd_scan", "d_dt_bias", g.dt_bias, p.nheads);
  check_len("ssd_scan", "d_A_log", g.A_log, p.nheads);
  check_len("ssd_scan", "d_D", g.D, p.nheads);
  if (chunk_size <= 0) fail("[ssd_scan] chunk_size must be positive, got {}", chunk_size);
  if (L == 0) {  // nothing scanned: the final state is the initial one
    for (int64_t i = 0; g.state0.data && i < p.nheads * S; ++i)
      g.state0.data[i] = d_state_final.data ? d_state_final.data[i] : 0.0f;
    return;
  }
  const cpu::SsdGradsT<float> grads{g.x.data,      g.x.ld,         g.B.data,     g.B.ld,       g.C.data,
                                    g.C.ld,        g.dt.data,      g.dt.ld,      g.state0.data, g.dt_bias.data(),
                                    g.A_log.data(), g.D.data()};
  cpu::ssd_scan_backward(p, x.data, x.ld, B.data, B.ld, C.data, C.ld, dt.data, dt.ld, state0.data, d_y.data, d_y.ld,
                         d_state_final.data, grads, L, chunk_size);
}

}  // namespace mamba2::ops
