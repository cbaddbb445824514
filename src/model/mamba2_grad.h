// Training forward and backward of the Mamba2 LM (DESIGN.md §1): the mean next-token
// cross-entropy of a batch of packed sequences and the gradient of every parameter.
#pragma once
#include <cstdint>
#include <functional>
#include <span>

#include "mamba2/config.h"
#include "model/weights.h"

namespace mamba2 {

// The gradient of every parameter, in the shapes of ModelWeights (conv_w as (conv_dim, d_conv)),
// fp32. With tied embeddings lm_head shares the embedding's buffer, as in the weights, so the
// head's part and the lookup's part add into one gradient; an untied head has its own.
using Gradients = ModelWeights;

// Zeros shaped (and tied) like `weights`, carrying their checkpoint names; fp32.
Gradients make_gradients(const ModelWeights& weights);

// Mixed precision: the weights the training pass computes with, from fp32 master weights on the
// GPU — the projection matrices (embedding, in_proj, out_proj, an untied head) as `dtype` copies
// (BF16 or F16), every other tensor the master itself (fp32). F32: the masters. An update of the
// masters writes the copies as it goes (ops::AdamWParam::copy, AdamWOptimizer::set_copies).
ModelWeights compute_weights(const ModelWeights& masters, DType dtype);
void zero_gradients(Gradients& grads);  // grads from make_gradients: one memset of their buffer

// The mean next-token cross-entropy over the padded vocabulary of sequences packed back to back
// in `ids` (`lengths` sum to ids.size()), each from a zero state as in Model::prefill without a
// state. Every position but the last of a sequence predicts the next id, so a sequence of length
// L contributes L-1 predictions (none for L = 1); the mean is over all predictions of all
// sequences, and it is an error if there are none.
double lm_loss(const ModelConfig& config, const ModelWeights& weights, std::span<const int32_t> ids,
               std::span<const int64_t> lengths);

// `weights` fp32 on either device, or compute_weights' view on the GPU: the projections then take
// bf16 / f16 operands (the norms' outputs rounded once, fp32 sums; their gradients' products as
// well) and so do the forward scan's products (its fp32 states, decays and sums as in inference);
// everything else — the residual stream, the conv, the scan's backward, the norms, the loss — fp32.
//
// The same loss (returned, bit-identical to lm_loss) and its gradient, ADDED to `grads`
// (parameter gradients accumulate; zero them for the gradient of this batch alone). The SSD
// backward runs chunked like the forward; activations kept per layer: the residual stream,
// in_proj's output and the scan output, and with Recompute::No also the normed input, the conv
// output, and Mamba2's gated norm output or Mamba-1's x_proj and dt_proj outputs, which are
// otherwise recomputed. The choice changes
// speed and memory, never a bit of the result: the recompute runs the forward's kernels on the
// forward's inputs. Auto keeps them on the GPU when all the layers save, those included, takes at
// most half of its memory.
// `grad_scale` multiplies the gradient (not the loss): f16 training's loss scale, which lifts
// small gradients above f16's underflow.
//
// `ready` (data-parallel training) is called as the backward finishes gradients, on the host once
// their launches are queued: with the layer index as each layer's are done (n_layer-1 down to 0),
// then with -1 for the rest (embedding, norm_f, an untied head). Their all-reduce can then run
// beside the backward of the earlier layers.
using GradsReady = std::function<void(int64_t layer)>;
enum class Recompute { Auto, No, Yes };
double lm_loss_and_grad(const ModelConfig& config, const ModelWeights& weights, std::span<const int32_t> ids,
                        std::span<const int64_t> lengths, Gradients& grads, double grad_scale = 1.0,
                        const GradsReady& ready = {}, Recompute recompute = Recompute::Auto);

}  // namespace mamba2
