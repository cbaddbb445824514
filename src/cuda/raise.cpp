// The .cu files' way to throw the engine's error (see cuda/common.cuh).
#include <string>

#include "mamba2/error.h"

namespace mamba2::cuda {

[[noreturn]] void raise(const std::string& message) { throw Error(message); }

}  // namespace mamba2::cuda
