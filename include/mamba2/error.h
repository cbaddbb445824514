// Errors: every failure the engine detects is a mamba2::Error whose message starts with the
// op or the file it concerns ("[safetensors] model.safetensors: ..."). Only the CLI catches.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace mamba2 {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace mamba2
