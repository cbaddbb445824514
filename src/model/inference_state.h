// Decode state of a batch of sequences (slots). Layout per layer, contiguous per slot:
//   conv (batch, d_conv-1, conv_dim)   the last inputs of the conv, oldest first
//   ssm  (batch, nheads, headdim, d_state)
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "core/view.h"

namespace mamba2 {

struct DecodeGraphs;  // model/mamba2_lm.cpp

class InferenceState {
 public:
  int64_t batch = 0;
  std::vector<Tensor> conv;  // per layer
  std::vector<Tensor> ssm;   // per layer
  // On the GPU: decode steps captured as CUDA graphs over these buffers, made by the model; they
  // go with the state.
  std::shared_ptr<DecodeGraphs> decode_graphs;

  MatView conv_states(size_t layer) { return MatView::of(conv[layer]); }
  MatView ssm_states(size_t layer) { return MatView::of(ssm[layer]); }
};

}  // namespace mamba2
