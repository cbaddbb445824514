// The CUDA selective scan (Mamba-1) against the CPU op, the oracle (itself checked against a
// float64 recurrence and finite differences in test_selective_scan.cpp): the prefill over packed
// sequences from states in other slots, real and complex, gated or not, d_state 16 (one
// checkpoint's), 5 and 33 (states per thread padded), channels not a multiple of the block's;
// the decode step; y written rounded for the next projection; the backward; and the promises: the step gives the scan's bits, a sequence's
// bits do not depend on its batch, the backward gives the same bits every run. Also the GPU
// bias of `linear` and its gradient against the CPU's.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "ops/ops.h"
#include "ops/seq_batch.h"
#include "selective_scan_problem.h"
#include "test_support.h"

namespace mamba2 {
namespace {

using test::rel_l2;
using test::rounded;
using test::same_bits;
using test::to_cpu;
using test::to_gpu;

struct CudaScanVariant {
  bool complex, gated;
  int64_t Dc, N;
};

void PrintTo(const CudaScanVariant& v, std::ostream* os) {
  *os << (v.complex ? "complex" : "real") << (v.gated ? " gated" : "") << " D " << v.Dc << " N " << v.N;
}

// A problem's tensors on one device.
struct ScanOperands {
  Tensor A_log, A_imag, D, dt_bias, x, dt, B, C, z, states0;
  ScanOperands(const test::SelectiveProblem& p, Device dev) {
    const auto on = [&](const Tensor& t) { return t.raw() ? t.to(dev, DType::F32) : Tensor(); };
    A_log = on(p.A_log), A_imag = on(p.A_imag), D = on(p.D), dt_bias = on(p.dt_bias), x = on(p.x), dt = on(p.dt);
    B = on(p.B), C = on(p.C), z = on(p.z), states0 = on(p.states0);
  }
  ops::SelectiveScanWeights weights(const test::SelectiveProblem& p) const { return {A_log, p.complex ? &A_imag : nullptr, D, dt_bias}; }
  MatView zv(const test::SelectiveProblem& p) { return p.gated ? MatView::of(z) : MatView{}; }
};

// The scan of p's sequences on `dev`: y and the states after, on the host.
void scan_on(const test::SelectiveProblem& p, Device dev, Tensor& y, Tensor& states) {
  ScanOperands o(p, dev);
  y = Tensor::empty({p.T(), p.Dc}, dev);
  states = o.states0;
  const ops::SeqBatch seqs(p.lengths, p.slots, 16, dev);
  ops::selective_scan(o.weights(p), MatView::of(o.x), MatView::of(o.dt), MatView::of(o.B), MatView::of(o.C), o.zv(p),
                      MatView::of(y), MatView::of(states), seqs);
  y = to_cpu(y), states = to_cpu(states);
}

bool equal_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

class CudaSelectiveScan : public ::testing::TestWithParam<CudaScanVariant> {};

// The CPU's fp32 scan is within 1e-5 of float64; the GPU's differs from it by its exp (the SFU's
// 2^x, relative 2⁻²²), its sum over n (another order) and its FMAs: a few 1e-7 a step, damped like
// the CPU's own rounding. 1e-5 relative L2 per sequence, as the CPU's bound against float64.
TEST_P(CudaSelectiveScan, PrefillAndStepMatchTheCpuAndEachOther) {
  MAMBA2_REQUIRE_GPU();
  const CudaScanVariant v = GetParam();
  const test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {1, 2, 7, 33, 64, 130}, 21);
  Tensor y_cpu, st_cpu, y_gpu, st_gpu;
  scan_on(p, Device::CPU, y_cpu, st_cpu);
  scan_on(p, Device::CUDA, y_gpu, st_gpu);
  const int64_t Dc = p.Dc, w = p.Dc * p.bw();
  int64_t t0 = 0;
  double worst = 0.0;
  for (size_t s = 0; s < p.lengths.size(); ++s) {
    const size_t off = size_t(t0 * Dc), n = size_t(p.lengths[s] * Dc);
    const double ey = rel_l2(y_gpu.data() + off, y_cpu.data() + off, n);
    const double es = rel_l2(st_gpu.data() + p.slots[s] * w, st_cpu.data() + p.slots[s] * w, size_t(w));
    EXPECT_LE(ey, 1e-5) << "y of sequence " << s;
    EXPECT_LE(es, 1e-5) << "final state of sequence " << s;
    worst = std::max({worst, ey, es});
    t0 += p.lengths[s];
  }
  std::printf("[cuda selective scan] worst relative L2 to the CPU: %.2e\n", worst);
  // Rows no sequence uses are left as they were.
  EXPECT_TRUE(equal_bits(st_gpu.data(), p.states0.data(), size_t(2 * w)));

  // Each sequence alone on the GPU: the bits it has in the batch; then token by token by the step
  // from the same state, alone and in a decode batch with the others: the scan's bits.
  ScanOperands o(p, Device::CUDA);
  t0 = 0;
  for (size_t s = 0; s < p.lengths.size(); ++s) {
    const int64_t L = p.lengths[s], slot = p.slots[s];
    const std::vector<int64_t> len{L}, one{slot};
    Tensor st = o.states0.to(Device::CUDA, DType::F32), ya = Tensor::empty({L, Dc}, Device::CUDA);
    const auto rows = [&](Tensor& t, int64_t r0, int64_t n) { return MatView::of(t).rows_slice(r0, n); };
    ops::selective_scan(o.weights(p), rows(o.x, t0, L), rows(o.dt, t0, L), rows(o.B, t0, L), rows(o.C, t0, L),
                        p.gated ? rows(o.z, t0, L) : MatView{}, MatView::of(ya), MatView::of(st),
                        ops::SeqBatch(len, one, 16, Device::CUDA));
    const Tensor ya_h = to_cpu(ya), st_h = to_cpu(st);
    EXPECT_TRUE(equal_bits(ya_h.data(), y_gpu.data() + t0 * Dc, size_t(L * Dc))) << "alone " << s;
    EXPECT_TRUE(equal_bits(st_h.data() + slot * w, st_gpu.data() + slot * w, size_t(w))) << "alone, state " << s;
    Tensor st2 = o.states0.to(Device::CUDA, DType::F32), yt = Tensor::empty({1, Dc}, Device::CUDA);
    std::vector<float> stepped(size_t(L * Dc));
    const ops::SeqBatch dec = ops::SeqBatch::decode(one, Device::CUDA);
    for (int64_t t = 0; t < L; ++t) {
      ops::selective_scan_step(o.weights(p), rows(o.x, t0 + t, 1), rows(o.dt, t0 + t, 1), rows(o.B, t0 + t, 1),
                               rows(o.C, t0 + t, 1), p.gated ? rows(o.z, t0 + t, 1) : MatView{}, MatView::of(yt),
                               MatView::of(st2), dec);
      const Tensor h = to_cpu(yt);
      std::copy_n(h.data(), Dc, stepped.data() + t * Dc);
    }
    const Tensor st2_h = to_cpu(st2);
    EXPECT_TRUE(equal_bits(stepped.data(), y_gpu.data() + t0 * Dc, size_t(L * Dc))) << "stepped " << s;
    EXPECT_TRUE(equal_bits(st2_h.data() + slot * w, st_gpu.data() + slot * w, size_t(w))) << "stepped, state " << s;
    t0 += L;
  }
}

// Sequences longer than a segment (256 tokens) are scanned by several blocks at once, their later
// segments starting from states formed through the segments' decay products: still within the
// CPU's bound (1e-5 relative L2 per sequence, y and final state), a sequence alone gives the bits
// it has in the batch, and a second run the same bits.
TEST_P(CudaSelectiveScan, LongSequencesRunInSegments) {
  MAMBA2_REQUIRE_GPU();
  const CudaScanVariant v = GetParam();
  const test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {700, 257, 1, 1000, 256}, 5);
  Tensor y_cpu, st_cpu, y_gpu, st_gpu, y_again, st_again;
  scan_on(p, Device::CPU, y_cpu, st_cpu);
  scan_on(p, Device::CUDA, y_gpu, st_gpu);
  scan_on(p, Device::CUDA, y_again, st_again);
  EXPECT_TRUE(equal_bits(y_gpu.data(), y_again.data(), size_t(y_gpu.numel())));
  EXPECT_TRUE(equal_bits(st_gpu.data(), st_again.data(), size_t(st_gpu.numel())));
  const int64_t Dc = p.Dc, w = p.Dc * p.bw();
  int64_t t0 = 0;
  double worst = 0.0;
  ScanOperands o(p, Device::CUDA);
  for (size_t s = 0; s < p.lengths.size(); ++s) {
    const int64_t L = p.lengths[s], slot = p.slots[s];
    const double ey = rel_l2(y_gpu.data() + t0 * Dc, y_cpu.data() + t0 * Dc, size_t(L * Dc));
    const double es = rel_l2(st_gpu.data() + slot * w, st_cpu.data() + slot * w, size_t(w));
    EXPECT_LE(ey, 1e-5) << "y of sequence " << s;
    EXPECT_LE(es, 1e-5) << "final state of sequence " << s;
    worst = std::max({worst, ey, es});
    const std::vector<int64_t> len{L}, one{slot};
    Tensor st = o.states0.to(Device::CUDA, DType::F32), ya = Tensor::empty({L, Dc}, Device::CUDA);
    const auto rows = [&](Tensor& t) { return MatView::of(t).rows_slice(t0, L); };
    ops::selective_scan(o.weights(p), rows(o.x), rows(o.dt), rows(o.B), rows(o.C), p.gated ? rows(o.z) : MatView{},
                        MatView::of(ya), MatView::of(st), ops::SeqBatch(len, one, 16, Device::CUDA));
    const Tensor ya_h = to_cpu(ya), st_h = to_cpu(st);
    EXPECT_TRUE(equal_bits(ya_h.data(), y_gpu.data() + t0 * Dc, size_t(L * Dc))) << "alone " << s;
    EXPECT_TRUE(equal_bits(st_h.data() + slot * w, st_gpu.data() + slot * w, size_t(w))) << "alone, state " << s;
    t0 += L;
  }
  EXPECT_TRUE(equal_bits(st_gpu.data(), p.states0.data(), size_t(2 * w)));  // rows no sequence uses
  std::printf("[cuda selective scan, segments] worst relative L2 to the CPU: %.2e\n", worst);
}

// Training in bf16 / f16 has the scan write y rounded to out_proj's dtype: the fp32 y's bits,
// rounded once. The CPU scan writes fp32 only, and says so.
TEST_P(CudaSelectiveScan, WritesYRoundedForTheNextProjection) {
  MAMBA2_REQUIRE_GPU();
  const CudaScanVariant v = GetParam();
  const test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {300, 1, 40}, 9);
  Tensor y32, st32;
  scan_on(p, Device::CUDA, y32, st32);
  for (DType narrow : {DType::BF16, DType::F16}) {
    SCOPED_TRACE(dtype_name(narrow));
    ScanOperands o(p, Device::CUDA);
    Tensor y = Tensor::empty({p.T(), p.Dc}, Device::CUDA, narrow), st = o.states0;
    ops::selective_scan(o.weights(p), MatView::of(o.x), MatView::of(o.dt), MatView::of(o.B), MatView::of(o.C),
                        o.zv(p), MatView::of(y), MatView::of(st), ops::SeqBatch(p.lengths, p.slots, 16, Device::CUDA));
    EXPECT_TRUE(same_bits(to_cpu(y), rounded(y32, narrow)));
    EXPECT_TRUE(same_bits(to_cpu(st), st32));
  }
  ScanOperands c(p, Device::CPU);
  Tensor y16 = Tensor::empty({p.T(), p.Dc}, Device::CPU, DType::BF16), st = c.states0;
  EXPECT_NE(test::error_message([&] {
              ops::selective_scan(c.weights(p), MatView::of(c.x), MatView::of(c.dt), MatView::of(c.B),
                                  MatView::of(c.C), c.zv(p), MatView::of(y16), MatView::of(st),
                                  ops::SeqBatch(p.lengths, p.slots, 16, Device::CPU));
            }).find("[selective_scan] y is BF16"),
            std::string::npos);
}

// The backward on the GPU against the CPU op's (fp32, within 1e-5 of float64 gradients): the GPU's
// own exp and sum order give a few 1e-7 per step, and the parameter gradients add such terms over
// every token and channel: 2e-5 relative L2 per gradient. The same bits when run again.
TEST_P(CudaSelectiveScan, BackwardMatchesTheCpuAndIsDeterministic) {
  MAMBA2_REQUIRE_GPU();
  const CudaScanVariant v = GetParam();
  const test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {3, 17, 40, 100}, 8);
  Tensor dy = test::random_tensor({p.T(), p.Dc}, 3), dsf = test::random_tensor({p.batch, p.Dc * p.bw()}, 4);
  // dz: d_z's dtype (bf16 as mixed-precision Mamba-1 training writes it, on the GPU).
  auto run = [&](Device dev, DType dz = DType::F32) {
    ScanOperands o(p, dev);
    std::vector<Tensor> out = {Tensor::zeros({p.T(), p.Dc}, dev), Tensor::zeros({p.T(), p.Dc}, dev),
                               Tensor::zeros({p.T(), p.bw()}, dev), Tensor::zeros({p.T(), p.bw()}, dev),
                               Tensor::zeros({p.T(), p.Dc}, dev, dz), Tensor::zeros({p.batch, p.Dc * p.bw()}, dev),
                               Tensor::zeros({p.Dc, p.N}, dev), Tensor::zeros({p.Dc, p.N}, dev),
                               Tensor::zeros({p.Dc}, dev), Tensor::zeros({p.Dc}, dev)};
    Tensor dy_d = dy.to(dev, DType::F32), dsf_d = dsf.to(dev, DType::F32);
    const ops::SelectiveScanGrads g{MatView::of(out[0]), MatView::of(out[1]), MatView::of(out[2]),
                                    MatView::of(out[3]), MatView::of(out[4]), MatView::of(out[5]),
                                    out[6], p.complex ? &out[7] : nullptr, out[8], out[9]};
    ops::selective_scan_backward(o.weights(p), MatView::of(o.x), MatView::of(o.dt), MatView::of(o.B), MatView::of(o.C),
                                 o.zv(p), MatView::of(o.states0), MatView::of(dy_d), MatView::of(dsf_d), g,
                                 ops::SeqBatch(p.lengths, p.slots, 16, dev));
    for (Tensor& t : out) t = to_cpu(t);
    return out;
  };
  const std::vector<Tensor> want = run(Device::CPU), got = run(Device::CUDA), again = run(Device::CUDA);
  const char* names[] = {"x", "dt", "B", "C", "z", "state0", "A_log", "A_imag", "D", "dt_bias"};
  double worst = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    if ((i == 4 && !p.gated) || (i == 7 && !p.complex)) continue;
    const double e = rel_l2(got[i].data(), want[i].data(), size_t(want[i].numel()));
    EXPECT_LE(e, 2e-5) << names[i];
    worst = std::max(worst, e);
    EXPECT_TRUE(equal_bits(got[i].data(), again[i].data(), size_t(got[i].numel()))) << names[i] << ": not deterministic";
  }
  std::printf("[cuda selective scan backward] worst gradient relative L2 to the CPU: %.2e\n", worst);
  if (!p.gated) return;
  // d_z written in bf16: the fp32 d_z rounded once, every other gradient unchanged.
  const std::vector<Tensor> narrow = run(Device::CUDA, DType::BF16);
  for (size_t i = 0; i < got.size(); ++i) {
    const Tensor expect = i == 4 ? test::rounded(got[i], DType::BF16) : got[i];
    EXPECT_TRUE(equal_bits(narrow[i].data(), expect.data(), size_t(expect.numel()))) << names[i] << " with a bf16 d_z";
  }
}

// Training keeps the checkpoints the forward leaves; the backward given them gives the bits it gives
// forming them itself (with the same forward kernels), over sequences of several segments from
// non-zero states. Checkpoints of zeros change d_C (Σ over channels of gy·h, the forward states'
// own term): they are read, not formed again.
TEST_P(CudaSelectiveScan, BackwardTakesTheForwardsCheckpoints) {
  MAMBA2_REQUIRE_GPU();
  const CudaScanVariant v = GetParam();
  const test::SelectiveProblem p = test::make_selective_problem(v.Dc, v.N, v.complex, v.gated, {700, 9, 300}, 6);
  const Device dev = Device::CUDA;
  ScanOperands o(p, dev);
  const ops::SeqBatch seqs(p.lengths, p.slots, 16, dev);
  Tensor dy = test::to_gpu(test::random_tensor({p.T(), p.Dc}, 3));
  Tensor ckpt = Tensor::empty({ops::selective_scan_checkpoint_rows(o.weights(p), seqs), p.Dc * p.bw()}, dev);
  Tensor y = Tensor::empty({p.T(), p.Dc}, dev), states = test::to_gpu(p.states0);  // the forward's own copy
  ops::selective_scan(o.weights(p), MatView::of(o.x), MatView::of(o.dt), MatView::of(o.B), MatView::of(o.C), o.zv(p),
                      MatView::of(y), MatView::of(states), seqs, MatView::of(ckpt));
  auto backward = [&](MatView ck) {
    std::vector<Tensor> out = {Tensor::zeros({p.T(), p.Dc}, dev), Tensor::zeros({p.T(), p.Dc}, dev),
                               Tensor::zeros({p.T(), p.bw()}, dev), Tensor::zeros({p.T(), p.bw()}, dev),
                               Tensor::zeros({p.T(), p.Dc}, dev), Tensor::zeros({p.Dc, p.N}, dev),
                               Tensor::zeros({p.Dc, p.N}, dev), Tensor::zeros({p.Dc}, dev), Tensor::zeros({p.Dc}, dev)};
    const ops::SelectiveScanGrads g{MatView::of(out[0]), MatView::of(out[1]), MatView::of(out[2]), MatView::of(out[3]),
                                    MatView::of(out[4]), MatView{}, out[5], p.complex ? &out[6] : nullptr, out[7],
                                    out[8]};
    ops::selective_scan_backward(o.weights(p), MatView::of(o.x), MatView::of(o.dt), MatView::of(o.B), MatView::of(o.C),
                                 o.zv(p), MatView::of(o.states0), MatView::of(dy), MatView{}, g, seqs, ck);
    for (Tensor& t : out) t = to_cpu(t);
    return out;
  };
  const std::vector<Tensor> own = backward(MatView{}), kept = backward(MatView::of(ckpt));
  const char* names[] = {"x", "dt", "B", "C", "z", "A_log", "A_imag", "D", "dt_bias"};
  for (size_t i = 0; i < own.size(); ++i)
    EXPECT_TRUE(equal_bits(kept[i].data(), own[i].data(), size_t(own[i].numel()))) << names[i];
  ckpt.set_zero();
  const std::vector<Tensor> zeroed = backward(MatView::of(ckpt));
  EXPECT_FALSE(equal_bits(zeroed[3].data(), own[3].data(), size_t(own[3].numel()))) << "d_C with zero checkpoints";
}

INSTANTIATE_TEST_SUITE_P(Variants, CudaSelectiveScan,
                         ::testing::Values(CudaScanVariant{false, false, 72, 16}, CudaScanVariant{false, true, 37, 5},
                                           CudaScanVariant{true, false, 72, 16}, CudaScanVariant{true, true, 20, 5},
                                           CudaScanVariant{false, true, 37, 33}, CudaScanVariant{true, true, 37, 33}),
                         [](const ::testing::TestParamInfo<CudaScanVariant>& info) {
                           return std::string(info.param.complex ? "Complex" : "Real") +
                                  (info.param.gated ? "Gated" : "") + "N" + std::to_string(info.param.N);
                         });

// The decode step's fusion: dt = dt_low @ dt_projᵀ inside the kernel, y in fp32 or bf16, against
// the projection then the plain step on the GPU: the same but for the dot product's order and y's
// rounding (fp32: 1e-6; bf16: its unit roundoff 2⁻⁸ ≈ 3.9e-3 relative bounds every element, 4e-3).
TEST(CudaSelectiveScanFused, StepWithDtProjMatchesProjectionThenStep) {
  MAMBA2_REQUIRE_GPU();
  // R = 12: one pass, a thread of each channel without a piece; 160 (2.8b): float4 loads in three
  // passes over dt_w's row (a channel's threads hold 64 of it at once); 301: element-wise loads.
  for (const auto& [complex, R] : std::vector<std::pair<bool, int64_t>>{{false, 12}, {true, 12}, {false, 160},
                                                                        {true, 160}, {false, 301}}) {
    SCOPED_TRACE("R " + std::to_string(R));
    const test::SelectiveProblem p = test::make_selective_problem(40, 16, complex, true, {1, 1, 1}, 9);
    const int64_t nb = 3;
    ScanOperands o(p, Device::CUDA);
    Tensor dt_low = to_gpu(test::random_tensor({nb, R}, 5)), dt_proj = to_gpu(test::random_tensor({p.Dc, R}, 6, -0.3f, 0.3f));
    Tensor dt = Tensor::empty({nb, p.Dc}, Device::CUDA);
    ops::linear(MatView::of(dt_low), dt_proj, MatView::of(dt), ops::LinearKernel::Decode);
    const ops::SeqBatch seqs = ops::SeqBatch::decode(p.slots, Device::CUDA);
    const auto rows = [&](Tensor& t) { return MatView::of(t).rows_slice(0, nb); };
    Tensor st_plain = o.states0.to(Device::CUDA, DType::F32), y_plain = Tensor::empty({nb, p.Dc}, Device::CUDA);
    ops::selective_scan_step(o.weights(p), rows(o.x), MatView::of(dt), rows(o.B), rows(o.C), rows(o.z),
                             MatView::of(y_plain), MatView::of(st_plain), seqs);
    const Tensor want = to_cpu(y_plain), want_st = to_cpu(st_plain);
    for (DType yd : {DType::F32, DType::BF16}) {
      Tensor st = o.states0.to(Device::CUDA, DType::F32), y = Tensor::empty({nb, p.Dc}, Device::CUDA, yd);
      ops::selective_scan_step_fused(o.weights(p), rows(o.x), MatView::of(dt_low), dt_proj, rows(o.B), rows(o.C),
                                     rows(o.z), MatView::of(y), MatView::of(st), seqs);
      const Tensor got = to_cpu(y), got_st = to_cpu(st);
      EXPECT_LE(rel_l2(got.data(), want.data(), size_t(want.numel())), yd == DType::F32 ? 1e-6 : 4e-3)
          << (complex ? "complex " : "real ") << dtype_name(yd);
      EXPECT_LE(rel_l2(got_st.data(), want_st.data(), size_t(want_st.numel())), 1e-6) << (complex ? "complex" : "real");
    }
  }
}

// d_state beyond the GPU kernel's 64: refused by name.
TEST(CudaSelectiveScanErrors, LargeStateIsRefused) {
  MAMBA2_REQUIRE_GPU();
  const test::SelectiveProblem p = test::make_selective_problem(8, 65, false, false, {4}, 1);
  Tensor y, st;
  try {
    scan_on(p, Device::CUDA, y, st);
    FAIL() << "d_state 65 was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("selective_scan"), std::string::npos) << e.what();
  }
}

// linear's bias on the GPU and its gradient: the CPU's within fp32 rounding (the bias gradient
// sums in double on both, in other groupings).
TEST(CudaLinearBias, ForwardAndGradientMatchTheCpu) {
  MAMBA2_REQUIRE_GPU();
  const int64_t m = 150, n = 37, k = 24;
  const Tensor x = test::random_tensor({m, k}, 1), W = test::random_tensor({n, k}, 2), b = test::random_tensor({n}, 3);
  Tensor y_cpu = Tensor::empty({m, n});
  ops::linear(MatView::of(const_cast<Tensor&>(x)), W, MatView::of(y_cpu), ops::LinearKernel::Training, &b);
  Tensor xg = to_gpu(x), Wg = to_gpu(W), bg = to_gpu(b), yg = Tensor::empty({m, n}, Device::CUDA);
  ops::linear(MatView::of(xg), Wg, MatView::of(yg), ops::LinearKernel::Training, &bg);
  const Tensor y_gpu = to_cpu(yg);
  EXPECT_LE(rel_l2(y_gpu.data(), y_cpu.data(), size_t(m * n)), 1e-6);
  Tensor db_cpu = Tensor::zeros({n}), db_gpu = Tensor::zeros({n}, Device::CUDA);
  ops::bias_backward(MatView::of(y_cpu), db_cpu);
  ops::bias_backward(MatView::of(yg), db_gpu);
  const Tensor db = to_cpu(db_gpu);
  EXPECT_LE(rel_l2(db.data(), db_cpu.data(), size_t(n)), 1e-6);
}

}  // namespace
}  // namespace mamba2
