#include "core/device.h"

#include <charconv>
#include <cstdlib>
#include <string>

#include "cuda/runtime.h"
#include "mamba2/error.h"

namespace mamba2 {

Device use_device(std::string_view spec, std::string_view what) {
  std::string device(spec);
  if (device.empty()) {
    const char* env = std::getenv("MAMBA2_DEVICE");
    device = env && *env ? env : cuda::device_count() > 0 ? "cuda" : "cpu";
  }
  if (device == "cpu") return Device::CPU;
  if (device != "cuda" && device.rfind("cuda:", 0) != 0) fail("{}: '{}' is not cpu, cuda or cuda:N", what, device);
  int index = 0;
  if (device.size() > 5) {
    const std::string n = device.substr(5);
    auto [q, ec] = std::from_chars(n.data(), n.data() + n.size(), index);
    if (ec != std::errc() || q != n.data() + n.size() || index < 0)
      fail("{}: '{}' is not cpu, cuda or cuda:N", what, device);
  }
  cuda::select_device(index);
  return Device::CUDA;
}

}  // namespace mamba2
