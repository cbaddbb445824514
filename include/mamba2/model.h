// The Mamba2 language model: load once, then chunked prefill and recurrent decode over
// batches of independent sequences.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "mamba2/config.h"

namespace mamba2 {

struct ModelWeights;   // src/model/weights.h
class InferenceState;  // src/model/inference_state.h

// Per-sequence recurrent state, O(1) in the sequence length: per layer the last d_conv-1 inputs
// of the conv and the (nheads, headdim, d_state) SSM state, fp32 on every device. All zeros: fresh
// sequences.
std::shared_ptr<InferenceState> make_state(const ModelConfig& config, int64_t batch, Device device = Device::CPU);

// Each decoded row's sampling candidates (Model::decode_candidates): row r's ids, ascending, and
// their logits at ids/logits[r·cap, r·cap + count[r]). When a row had more than cap (ties), `dense`
// is set and whole_rows holds every row's whole logits (Model::vocab() columns) instead.
struct DecodeCandidates {
  int64_t cap = 0;
  std::vector<int32_t> count, ids;
  std::vector<float> logits;
  bool dense = false;
  std::vector<float> whole_rows;
};

class Model {
 public:
  // Reads config.json and the weights of a model folder (either layout), or a llama.cpp Mamba2
  // GGUF file (model/gguf_import.h). keep_bf16: BF16 projection matrices stay as the file holds
  // them (mapped), the model then in BF16 on the CPU: for a placement in BF16 (the GPU's), which
  // then needs no fp32 copy of them. Otherwise a plain BF16 checkpoint is widened to fp32 (the
  // CPU computes it so), as are F16 ones.
  static Model load(const std::filesystem::path& path, bool keep_bf16 = false);
  Model(ModelConfig config, std::shared_ptr<const ModelWeights> weights, Device device = Device::CPU,
        DType dtype = DType::F32);
  // This model on `device`, its projections and their inputs in `dtype`; everything else, the
  // residual stream and the states, stays fp32. On the CPU `dtype` is the weights' (F32 or BF16:
  // half the bytes read a token) and the arithmetic is fp32, on the weights as stored.
  Model to(Device device, DType dtype) const;

  const ModelConfig& config() const { return config_; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  // A state for `batch` sequences on this model's device.
  std::shared_ptr<InferenceState> new_state(int64_t batch) const { return make_state(config_, batch, device_); }
  const ModelWeights& weights() const { return *weights_; }
  // 16 hex digits naming these weights and dimensions (a hash of the architecture and of samples
  // of every tensor, taken when the weights are on the CPU and kept by `to`): state snapshots
  // carry it, so that a state is never continued by another model.
  const std::string& fingerprint() const { return fingerprint_; }
  int64_t vocab() const { return config_.vocab_padded(); }  // logits columns

  // Chunked prefill of sequences packed back to back in `ids` (`lengths` sum to ids.size()).
  // With a state, sequence i continues from slot i (a fresh state is all zeros, i.e. a new
  // sequence) and leaves its final state there, ready for decode or a further prefill; without
  // one, every sequence starts from zeros. logits: (ids.size(), vocab) when all_positions, else
  // (lengths.size(), vocab) for the last position of each sequence.
  // `slots` (with a state): sequence i continues slot slots[i] instead of slot i.
  void prefill(std::span<const int32_t> ids, std::span<const int64_t> lengths, InferenceState* state,
               bool all_positions, std::vector<float>& logits, std::span<const int64_t> slots = {}) const;

  // When only the last positions' logits are asked for, prefill runs in rounds of about this
  // many tokens (whole chunks of each sequence, at least one chunk each), the state carrying each
  // sequence from one round to the next, so that activation memory is bounded whatever the
  // prompt length. Default 8192.
  void set_max_prefill_tokens(int64_t tokens);

  // One token for each slot in `slots` of `state`; logits (slots.size(), vocab).
  void decode(std::span<const int32_t> tokens, std::span<const int64_t> slots, InferenceState& state,
              std::vector<float>& logits) const;
  // decode, then the greedy choice of each row: the argmax over ids [0, vocab) (the first of equal
  // logits). On the GPU only the ids come back to the host.
  void decode_greedy(std::span<const int32_t> tokens, std::span<const int64_t> slots, InferenceState& state,
                     int64_t vocab, std::vector<int32_t>& next) const;
  // decode, then only what top-k sampling needs of each row (ops::top_k over ids [0, vocab)): the
  // ids whose logit / temperature[r] reaches the k[r]-th largest, ties kept, and their logits. On
  // the GPU only these come back (a few hundred bytes a row instead of the whole logits).
  void decode_candidates(std::span<const int32_t> tokens, std::span<const int64_t> slots, InferenceState& state,
                         int64_t vocab, std::span<const int32_t> k, std::span<const float> temperature,
                         DecodeCandidates& out) const;
  // On the GPU a decode step is captured as one CUDA graph per (model, batch size), kept with the
  // state, and replayed (default on); off, every step launches its kernels one by one. The bits
  // are the same.
  void set_decode_graphs(bool on);

 private:
  // The slots of a decode step are distinct rows of a state made for this model.
  void check_decode(std::span<const int32_t> tokens, std::span<const int64_t> slots,
                    const InferenceState& state) const;
  // A decode step on the GPU: the logits and/or the greedy ids over `greedy_cols` columns; the
  // step's logits on the GPU, valid until the next step of this batch size.
  const Tensor& decode_on_gpu(std::span<const int32_t> tokens, std::span<const int64_t> slots, InferenceState& state,
                     std::vector<float>* logits, int64_t greedy_cols, std::vector<int32_t>* next) const;
  // One pass over packed sequences; sequence i uses slot slots[i] of `state` (without a state,
  // slots are 0..n-1 and every sequence starts from zeros).
  void prefill_pass(std::span<const int32_t> ids, std::span<const int64_t> lengths, std::span<const int64_t> slots,
                    InferenceState* state, bool all_positions, std::vector<float>& logits) const;

  ModelConfig config_;
  std::shared_ptr<const ModelWeights> weights_;
  Device device_ = Device::CPU;
  DType dtype_ = DType::F32;
  // What the projections' inputs are in: the compute dtype on the GPU, fp32 on the CPU.
  DType activation_dtype() const { return device_ == Device::CPU ? DType::F32 : dtype_; }
  std::string fingerprint_;
  bool decode_graphs_ = true;
  int64_t max_prefill_tokens_ = 8192;
};

}  // namespace mamba2
