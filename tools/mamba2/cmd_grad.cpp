// grad: the training loss of a batch of sequences and the gradient of every parameter, written as
// fp32 safetensors: "loss" (a 0-d scalar) and "grad.<name>" named and shaped as in the checkpoint.
#include "commands.h"
#include "io/safetensors.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/mamba2_grad.h"

namespace mamba2::cli {

void add_grad(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "grad", "Write the mean next-token cross-entropy and the gradient of every parameter (fp32 .safetensors)");
  struct Opts {
    std::string model, ids, lengths, out;
    int threads = 0;
    Placement place;
  };
  auto o = std::make_shared<Opts>();
  add_placement_options(sub, o->place);
  sub->add_option("--model", o->model, "Model folder or GGUF file")->required();
  sub->add_option("--ids", o->ids, "Token ids, comma-separated")->required();
  sub->add_option("--lengths", o->lengths,
                  "Split --ids into independent sequences of these lengths (each from a zero state)");
  sub->add_option("--out", o->out, "Output .safetensors: 'loss' (0-d) and 'grad.<parameter name>'")->required();
  sub->add_option("--threads", o->threads, "Threads (default: all cores)");
  on_run(sub, [o] {
    set_threads(o->threads);
    const std::vector<int64_t> raw_ids = parse_int_list(o->ids, "--ids");
    const std::vector<int64_t> lengths = o->lengths.empty() ? std::vector<int64_t>{int64_t(raw_ids.size())}
                                                            : parse_int_list(o->lengths, "--lengths");
    int64_t total = 0, predicted = 0;
    for (int64_t len : lengths) {
      if (len <= 0) fail("[cli] --lengths: every length must be positive, got {}", len);
      total += len;
      predicted += len - 1;
    }
    if (total != int64_t(raw_ids.size())) fail("[cli] --lengths sum to {} but --ids has {} ids", total, raw_ids.size());
    if (predicted == 0)
      fail("[cli] no positions to predict: every sequence has length 1 (a sequence of length L predicts L-1 tokens)");
    // fp32 master weights (a quantized folder's widened); on the GPU the projections may compute
    // in bf16 or f16 (mixed precision, model/mamba2_grad.h).
    const Device dev = placement_device(o->place);
    DType compute = DType::F32;
    if (!o->place.dtype.empty()) {
      const std::optional<DType> d = parse_dtype(o->place.dtype);
      if (!d || (*d != DType::F32 && dev == Device::CPU))
        fail("[cli] --dtype {}: gradients are computed in f32, or on the GPU with bf16 or f16 projections",
             o->place.dtype);
      compute = *d;
    }
    const Model model = Model::load(o->model).to(dev, DType::F32);
    std::vector<int32_t> ids;
    for (size_t i = 0; i < raw_ids.size(); ++i) {
      if (raw_ids[i] < 0 || raw_ids[i] >= model.vocab())
        fail("[cli] --ids: id {} at position {} is out of range [0, {})", raw_ids[i], i, model.vocab());
      ids.push_back(int32_t(raw_ids[i]));
    }
    Gradients grads = make_gradients(model.weights());
    const double loss =
        lm_loss_and_grad(model.config(), compute_weights(model.weights(), compute), ids, lengths, grads);
    if (dev != Device::CPU) grads = place_weights(grads, Device::CPU, DType::F32);
    const float loss32 = float(loss);
    std::vector<TensorToWrite> tensors{{"loss", DType::F32, {}, &loss32}};
    for (const NamedTensor& nt : checkpoint_named_tensors(grads, model.config()))
      tensors.push_back({"grad." + nt.name, DType::F32, nt.stored_shape, nt.tensor->data()});
    write_safetensors(o->out, tensors, {{"format", "pt"}});
    fmt::print("loss {:.6f} (mean over {} predicted positions); {} gradients written to {}\n", loss, predicted,
               tensors.size() - 1, o->out);
  });
}

}  // namespace mamba2::cli
