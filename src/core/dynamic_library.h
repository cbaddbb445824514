// Shared libraries opened at run time (dlopen) instead of linked: the GPU libraries that only a GPU
// run needs (cuBLASLt, NCCL). Linked, every process loaded and relocated them at start, and a
// machine without them could not start the program at all.
#pragma once
#include <string>
#include <vector>

namespace mamba2 {

// The first of `candidates` that the loader opens, kept open for the process's life: a bare soname
// is looked for on LD_LIBRARY_PATH, the binary's rpath and the loader's cache; a path is taken as
// it is. nullptr if none opens, with the loader's message for each (they name the file) in `why`,
// joined by "; ".
void* open_library(const std::vector<std::string>& candidates, std::string& why);

// `name` in `library` (dlsym); nullptr where the library has no such symbol.
void* library_symbol(void* library, const char* name);
// `name` in `library` as `fn`'s function type; false (and fn null) where the library has no such symbol.
template <class Fn>
bool bind_symbol(void* library, Fn*& fn, const char* name) {
  fn = reinterpret_cast<Fn*>(library_symbol(library, name));
  return fn != nullptr;
}

}  // namespace mamba2
