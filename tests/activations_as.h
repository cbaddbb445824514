// Scopes with a given activation mode for the CPU's narrow weights (ops::Q8Activations,
// ops::Bf16Activations); their own header so that the kernel tests (built alone for arm64, without
// the fixtures test_support.h names) can use them.
#pragma once
#include "ops/ops.h"

namespace mamba2::test {

// Sets how the CPU multiplies Q8_0 and Q4_0 weights for a scope, then restores it.
struct Q8ActivationsAs {
  ops::Q8Activations saved = ops::q8_activations();
  explicit Q8ActivationsAs(ops::Q8Activations a) { ops::set_q8_activations(a); }
  ~Q8ActivationsAs() { ops::set_q8_activations(saved); }
};

// The same for bf16 weights.
struct Bf16ActivationsAs {
  ops::Bf16Activations saved = ops::bf16_activations();
  explicit Bf16ActivationsAs(ops::Bf16Activations a) { ops::set_bf16_activations(a); }
  ~Bf16ActivationsAs() { ops::set_bf16_activations(saved); }
};

}  // namespace mamba2::test
