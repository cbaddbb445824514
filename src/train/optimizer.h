// AdamW over the parameters of a Mamba2 LM, with the parameter groups of the official recipe, the
// learning-rate schedule and global-norm clipping.
//
// Weight decay applies to the tensors of rank ≥ 2 (the nanoGPT / Hugging Face rule): in_proj,
// out_proj, conv1d.weight (conv_dim, 1, d_conv), the embedding and an untied lm_head. Not
// decayed: dt_bias, A_log, D (mamba_ssm marks them _no_weight_decay; Mamba-1's A_log and A_imag
// too, though matrices), conv1d.bias, the projection biases and every norm weight (layers' norm,
// the gated norm, norm_f).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "mamba2/config.h"
#include "model/mamba2_grad.h"

namespace mamba2::training {

struct Param {
  std::string name;    // Hugging Face layout name
  Shape stored_shape;  // as in the checkpoint
  Tensor* value;
  Tensor* grad;
  Tensor m, v;         // fp32 moments
  bool decay;
  Tensor* copy = nullptr;  // the GPU's bf16 / f16 copy that the steps compute with, updated by step()
};

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamWOptimizer {
 public:
  // `weights` and `grads` must outlive the optimiser; a tied head is the embedding, once.
  AdamWOptimizer(ModelWeights& weights, Gradients& grads, const ModelConfig& config, AdamWSettings settings);
  std::vector<Param>& params() { return params_; }
  const std::vector<Param>& params() const { return params_; }
  int64_t steps() const { return steps_; }
  void set_steps(int64_t steps) { steps_ = steps; }  // data parallel: rank 0's, with its moments

  // Σ of the squared gradients of every parameter, in double (independent of the thread count).
  double grad_sum_squares() const;
  void scale_grads(double s);
  // One update at `lr` from the gradients times grad_scale.
  void step(double lr, double grad_scale);
  // The compute weights (compute_weights of the weights given at construction): step() writes
  // each of their tensors that is a rounded copy as it updates the master (no cast after it).
  void set_copies(ModelWeights& compute, const ModelConfig& config);

  // m.<name> and v.<name>, fp32 safetensors; the step count is the caller's to keep.
  void save(const std::filesystem::path& path) const;
  void load(const std::filesystem::path& path, int64_t steps);

 private:
  std::vector<Param> params_;
  AdamWSettings settings_;
  int64_t steps_ = 0;
};

// The learning rate of step index s (0-based): linear warmup from lr/warmup to lr over
// warmup_steps, then cosine from lr to min_lr, reaching min_lr at s = max_steps ("cosine"), or lr
// held ("constant").
double schedule_lr(int64_t s, int64_t max_steps, int64_t warmup_steps, double lr, double min_lr,
                   const std::string& schedule);

// torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6) when norm exceeds max_norm, else 1
// (max_norm 0: no clipping).
double clip_coefficient(double norm, double max_norm);

}  // namespace mamba2::training
