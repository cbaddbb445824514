// A scope with a given activation mode for Q8_0 and Q4_0 weights (ops::Q8Activations); its own
// header so that the kernel tests (built alone for arm64, without the fixtures test_support.h
// names) can use it.
#pragma once
#include "ops/ops.h"

namespace mamba2::test {

// Sets how the CPU multiplies Q8_0 and Q4_0 weights for a scope, then restores it.
struct Q8ActivationsAs {
  ops::Q8Activations saved = ops::q8_activations();
  explicit Q8ActivationsAs(ops::Q8Activations a) { ops::set_q8_activations(a); }
  ~Q8ActivationsAs() { ops::set_q8_activations(saved); }
};

}  // namespace mamba2::test
