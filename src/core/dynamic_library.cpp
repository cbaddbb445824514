#include "core/dynamic_library.h"

#include <dlfcn.h>

namespace mamba2 {

void* open_library(const std::vector<std::string>& candidates, std::string& why) {
  why.clear();
  for (const std::string& candidate : candidates) {
    // RTLD_LOCAL: the library's symbols stay out of the global namespace; we reach them only
    // through library_symbol.
    if (void* library = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      why.clear();
      return library;
    }
    const char* message = dlerror();
    if (!why.empty()) why += "; ";
    why += message ? message : candidate + ": not loaded";
  }
  return nullptr;
}

void* library_symbol(void* library, const char* name) { return dlsym(library, name); }

}  // namespace mamba2
