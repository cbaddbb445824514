// logits: the logits at every position of one or more sequences, as a float32 .npy.
#include <algorithm>

#include "commands.h"
#include "io/npy.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "model/inference_state.h"

namespace mamba2::cli {

namespace {

// Every position through the recurrent step, all sequences advancing together.
std::vector<float> decode_all(const Model& model, const std::vector<int32_t>& ids, const std::vector<int64_t>& lengths) {
  const int64_t V = model.vocab();
  std::vector<int64_t> offsets(lengths.size());
  int64_t max_len = 0, total = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    offsets[s] = total;
    total += lengths[s];
    max_len = std::max(max_len, lengths[s]);
  }
  std::vector<float> out(size_t(total * V)), step_logits;
  auto state = model.new_state(int64_t(lengths.size()));
  for (int64_t t = 0; t < max_len; ++t) {
    std::vector<int32_t> tokens;
    std::vector<int64_t> slots;
    for (size_t s = 0; s < lengths.size(); ++s) {
      if (t < lengths[s]) {
        tokens.push_back(ids[size_t(offsets[s] + t)]);
        slots.push_back(int64_t(s));
      }
    }
    model.decode(tokens, slots, *state, step_logits);
    for (size_t i = 0; i < slots.size(); ++i)
      std::copy_n(step_logits.data() + i * size_t(V), V, out.data() + (offsets[size_t(slots[i])] + t) * V);
  }
  return out;
}

}  // namespace

void add_logits(CLI::App& app) {
  auto* sub = app.add_subcommand("logits", "Write the logits at every position as a float32 .npy (rows in input order)");
  struct Opts {
    std::string model, ids, lengths, mode = "prefill", out;
    int threads = 0, top = 0;
    Placement placement;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--model", o->model, "Model folder or GGUF file")->required();
  sub->add_option("--ids", o->ids, "Token ids, comma-separated")->required();
  sub->add_option("--lengths", o->lengths, "Split --ids into independent sequences of these lengths (one batch)");
  sub->add_option("--mode", o->mode, "prefill (chunked scan) or decode (one token at a time)")
      ->check(CLI::IsMember({"prefill", "decode"}))
      ->capture_default_str();
  sub->add_option("--out", o->out, "Output .npy file");
  sub->add_option("--top", o->top, "Print the top K tokens at the last position of each sequence");
  sub->add_option("--threads", o->threads, "Threads (default: all cores)");
  add_placement_options(sub, o->placement);
  on_run(sub, [o] {
    set_threads(o->threads);
    if (o->out.empty() && o->top <= 0) fail("[cli] logits needs --out F.npy and/or --top K");
    const std::vector<int64_t> raw_ids = parse_int_list(o->ids, "--ids");
    std::vector<int64_t> lengths = o->lengths.empty() ? std::vector<int64_t>{int64_t(raw_ids.size())}
                                                      : parse_int_list(o->lengths, "--lengths");
    int64_t total = 0;
    for (int64_t len : lengths) {
      if (len <= 0) fail("[cli] --lengths: every length must be positive, got {}", len);
      total += len;
    }
    if (total != int64_t(raw_ids.size()))
      fail("[cli] --lengths sum to {} but --ids has {} ids", total, raw_ids.size());
    const Model model = load_model(o->model, o->placement);
    std::vector<int32_t> ids;
    for (size_t i = 0; i < raw_ids.size(); ++i) {
      if (raw_ids[i] < 0 || raw_ids[i] >= model.vocab())
        fail("[cli] --ids: id {} at position {} is out of range [0, {})", raw_ids[i], i, model.vocab());
      ids.push_back(int32_t(raw_ids[i]));
    }
    std::vector<float> logits;
    if (o->mode == "decode")
      logits = decode_all(model, ids, lengths);
    else
      model.prefill(ids, lengths, nullptr, true, logits);
    if (!o->out.empty()) write_npy(o->out, logits.data(), {total, model.vocab()});
    int64_t end = 0;
    for (size_t s = 0; o->top > 0 && s < lengths.size(); ++s) {
      end += lengths[s];
      const float* row = logits.data() + (end - 1) * model.vocab();
      std::vector<int64_t> order(size_t(model.vocab()));
      for (int64_t v = 0; v < model.vocab(); ++v) order[size_t(v)] = v;
      const int64_t k = std::min<int64_t>(o->top, model.vocab());
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int64_t a, int64_t b) { return row[a] > row[b]; });
      fmt::print("sequence {} (length {}), top {} next tokens:", s, lengths[s], k);
      for (int64_t i = 0; i < k; ++i) fmt::print(" {}:{:.4f}", order[size_t(i)], row[order[size_t(i)]]);
      fmt::print("\n");
    }
  });
}

}  // namespace mamba2::cli
