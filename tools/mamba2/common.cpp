#include <omp.h>
#include <sys/resource.h>

#include <charconv>
#include <filesystem>
#include <cstdlib>
#include <map>

#include "commands.h"
#include "core/device.h"
#include "mamba2/error.h"

namespace mamba2::cli {

namespace {
std::map<CLI::App*, std::function<void()>>& actions() {
  static std::map<CLI::App*, std::function<void()>> a;
  return a;
}
}  // namespace

void on_run(CLI::App* sub, std::function<void()> action) { actions()[sub] = std::move(action); }

void run_selected(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands()) actions().at(sub)();
}

std::vector<int64_t> parse_int_list(const std::string& text, const char* flag) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    int64_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size())
      fail("[cli] {}: '{}' is not an integer (expected a comma-separated list like 5,17,3)", flag, item);
    out.push_back(v);
    pos = end + 1;
  }
  return out;
}

void set_threads(int threads) {
  if (threads < 0) fail("[cli] --threads must be positive, got {}", threads);
  if (threads > 0) omp_set_num_threads(threads);
}

void add_placement_options(CLI::App* sub, Placement& p) {
  sub->add_option("--device", p.device, "cpu, cuda or cuda:N (default: the first GPU when there is one)");
  sub->add_option("--dtype", p.dtype, "f32, bf16, f16, q8 or q4: the projections' weights (and on the GPU their "
                                      "inputs; the CPU computes in f32 on f32, bf16, q8 or q4 weights: llama.cpp's "
                                      "q8_0 and q4_0 block layouts, against int8 activations where those kernels are "
                                      "faster: q8_0 and q4_0 on AVX-512 VNNI and on AVX2; "
                                      "MAMBA2_Q8_ACTIVATIONS=int8|f32 chooses; bf16 against bf16 activations on AVX-512 "
                                      "BF16, MAMBA2_BF16_ACTIVATIONS=bf16|f32 chooses). Default: bf16 on the GPU; on the CPU f32, or "
                                      "the format of a mamba2 quantize folder (bf16, q8 or q4)");
}

Device placement_device(const Placement& p) { return use_device(p.device, "[cli] --device"); }

Tokenizer load_tokenizer(const std::string& model_dir, const std::string& path) {
  if (!path.empty()) return Tokenizer::load(path);
  if (std::filesystem::is_regular_file(model_dir)) return Tokenizer::load(model_dir);  // a GGUF file's own
  const std::filesystem::path in_model = std::filesystem::path(model_dir) / "tokenizer.json";
  if (!std::filesystem::exists(in_model)) fail("[cli] no tokenizer.json in {}: give one with --tokenizer", model_dir);
  return Tokenizer::load(in_model);
}

Model load_model(const std::string& dir, const Placement& p) {
  const Device dev = placement_device(p);
  if (dev == Device::CUDA) {
    // The GPU's dtype does not follow the stored format; a BF16 file placed in BF16 goes up as
    // the file holds it, without the fp32 copy the CPU would compute on.
    const DType dtype = placement_dtype(p, dev, DType::F32);
    return Model::load(dir, dtype == DType::BF16).to(dev, dtype);
  }
  const Model stored = Model::load(dir);
  return stored.to(dev, placement_dtype(p, dev, stored.dtype()));
}

DType placement_dtype(const Placement& p, Device dev, DType stored) {
  if (p.dtype == "q8" || p.dtype == "q4") {
    if (dev != Device::CPU)
      fail("[cli] --dtype {}: block-quantized weights run on the CPU (the GPU takes f32, bf16 or f16)", p.dtype);
    return p.dtype == "q8" ? DType::Q8_0 : DType::Q4_0;
  }
  DType dtype = dev == Device::CUDA ? DType::BF16 : stored;  // stored: F32, or a `mamba2 quantize` folder's format
  if (!p.dtype.empty()) {
    const std::optional<DType> parsed = parse_dtype(p.dtype);
    if (!parsed) fail("[cli] --dtype: '{}' is not f32, bf16, f16, q8 or q4", p.dtype);
    dtype = *parsed;
  }
  if (dev == Device::CPU && dtype == DType::F16)
    fail("[cli] --dtype f16: the CPU takes f32, bf16, q8 or q4 weights (f16 runs on the GPU)");
  return dtype;
}

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

}  // namespace mamba2::cli
