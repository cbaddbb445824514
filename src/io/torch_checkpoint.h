// PyTorch's torch.save format (pytorch_model.bin): a zip archive whose data.pkl is a pickled
// state dict and whose data/<key> entries are raw tensor storages. The pickle is interpreted,
// never executed: only an allow-list of globals is accepted.
#pragma once
#include <filesystem>

#include "io/tensor_archive.h"

namespace mamba2 {

TensorArchive read_torch_checkpoint(const std::filesystem::path& path);

}  // namespace mamba2
