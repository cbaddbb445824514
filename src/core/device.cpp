#include "core/device.h"

#include <charconv>
#include <cstdlib>
#include <string>

#include "cuda/runtime.h"
#include "mamba2/error.h"

namespace mamba2 {

std::optional<int> parse_device(std::string_view spec) {
  if (spec == "cpu") return -1;
  if (spec == "cuda") return 0;
  if (spec.substr(0, 5) != "cuda:" || spec.size() == 5) return std::nullopt;
  int index = 0;
  auto [q, ec] = std::from_chars(spec.data() + 5, spec.data() + spec.size(), index);
  if (ec != std::errc() || q != spec.data() + spec.size() || index < 0) return std::nullopt;
  return index;
}

std::string default_device(std::string_view spec) {
  if (!spec.empty()) return std::string(spec);
  const char* env = std::getenv("MAMBA2_DEVICE");
  return env && *env ? env : cuda::device_count() > 0 ? "cuda" : "cpu";
}

Device use_device(std::string_view spec, std::string_view what) {
  const std::string device = default_device(spec);
  const std::optional<int> index = parse_device(device);
  if (!index) fail("{}: '{}' is not cpu, cuda or cuda:N", what, device);
  if (*index < 0) return Device::CPU;
  cuda::select_device(*index);
  return Device::CUDA;
}

}  // namespace mamba2
