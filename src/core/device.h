// The device a --device flag or a config's "device" names: "cpu", "cuda" or "cuda:N" (GPU N, made
// the one every later GPU call uses), or empty for the default: the first GPU when there is one,
// else the CPU (the MAMBA2_DEVICE environment variable sets another default).
#pragma once
#include <string_view>

#include "core/tensor.h"

namespace mamba2 {

// Fails naming `what` (e.g. "[cli] --device") for anything else, or for a GPU index that is not there.
Device use_device(std::string_view spec, std::string_view what);

}  // namespace mamba2
