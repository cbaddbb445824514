// The device a --device flag or a config's "device" names: "cpu", "cuda" or "cuda:N" (GPU N, made
// the one every later GPU call uses), or empty for the default: the first GPU when there is one,
// else the CPU (the MAMBA2_DEVICE environment variable sets another default).
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "core/tensor.h"

namespace mamba2 {

// Fails naming `what` (e.g. "[cli] --device") for anything else, or for a GPU index that is not there.
Device use_device(std::string_view spec, std::string_view what);
// `spec`, or when it is empty the default it stands for (unchecked).
std::string default_device(std::string_view spec);

// The GPU index of "cuda" (0) or "cuda:N", -1 for "cpu", nullopt for anything else (no GPU is
// touched: configs are checked with it before a run starts).
std::optional<int> parse_device(std::string_view spec);

}  // namespace mamba2
