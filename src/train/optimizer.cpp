#include "train/optimizer.h"

#include <cmath>
#include <cstring>
#include <numbers>
#include <vector>

#include "cuda/runtime.h"
#include "io/safetensors.h"
#include "mamba2/error.h"
#include "ops/ops.h"

namespace mamba2::training {

namespace {

// Mamba-1's A (A_log, A_imag: (d_inner, N)) is a matrix that mamba_ssm keeps out of weight decay.
bool no_decay_matrix(const std::string& name) {
  for (const std::string_view end : {".A_log", ".A_imag"})
    if (name.size() >= end.size() && name.compare(name.size() - end.size(), end.size(), end) == 0) return true;
  return false;
}

}  // namespace

AdamWOptimizer::AdamWOptimizer(ModelWeights& weights, Gradients& grads, const ModelConfig& config,
                               AdamWSettings settings)
    : settings_(settings) {
  const std::vector<NamedTensor> w = hf_named_tensors(weights, config), g = hf_named_tensors(grads, config);
  if (w.size() != g.size()) fail("[adamw] the gradients were made for another model");
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i].tensor->shape() != g[i].tensor->shape()) fail("[adamw] gradient of {} has another shape", w[i].name);
    // The named lists point into `weights` and `grads`, which the caller passed as mutable.
    params_.push_back({w[i].name, w[i].stored_shape, const_cast<Tensor*>(w[i].tensor), const_cast<Tensor*>(g[i].tensor),
                       Tensor::zeros(w[i].tensor->shape(), w[i].tensor->device()),
                       Tensor::zeros(w[i].tensor->shape(), w[i].tensor->device()),
                       w[i].stored_shape.size() >= 2 && !no_decay_matrix(w[i].name)});
  }
}

double AdamWOptimizer::grad_sum_squares() const {
  std::vector<const Tensor*> grads;
  for (const Param& p : params_) grads.push_back(p.grad);
  return ops::sum_squares(grads);
}

void AdamWOptimizer::scale_grads(double s) {
  for (Param& p : params_) ops::scale(*p.grad, s);
}

void AdamWOptimizer::set_copies(ModelWeights& compute, const ModelConfig& config) {
  const std::vector<NamedTensor> c = hf_named_tensors(compute, config);
  if (c.size() != params_.size()) fail("[adamw] the compute weights were made for another model");
  for (size_t i = 0; i < c.size(); ++i) {
    if (c[i].name != params_[i].name || c[i].tensor->shape() != params_[i].value->shape())
      fail("[adamw] compute weight {} does not match parameter {}", c[i].name, params_[i].name);
    params_[i].copy = c[i].tensor->raw() == params_[i].value->raw() ? nullptr : const_cast<Tensor*>(c[i].tensor);
  }
}

void AdamWOptimizer::step(double lr, double grad_scale) {
  ++steps_;
  std::vector<ops::AdamWParam> ps;
  for (Param& p : params_) ps.push_back({p.value, p.grad, &p.m, &p.v, p.decay, p.copy});
  ops::adamw(ps, {lr, settings_.beta1, settings_.beta2, settings_.eps, settings_.weight_decay, steps_, grad_scale});
}

void AdamWOptimizer::save(const std::filesystem::path& path) const {
  std::vector<TensorToWrite> tensors;
  std::vector<Tensor> host;  // the moments copied from the GPU
  host.reserve(2 * params_.size());
  auto on_host = [&](const Tensor& t) {
    if (t.device() == Device::CPU) return t.data();
    host.push_back(t.to(Device::CPU, DType::F32));
    return static_cast<const float*>(host.back().data());
  };
  for (const Param& p : params_) {
    tensors.push_back({"m." + p.name, DType::F32, p.stored_shape, on_host(p.m)});
    tensors.push_back({"v." + p.name, DType::F32, p.stored_shape, on_host(p.v)});
  }
  write_safetensors(path, tensors, {{"format", "mamba2-adamw"}, {"step", std::to_string(steps_)}});
}

void AdamWOptimizer::load(const std::filesystem::path& path, int64_t steps) {
  const TensorArchive a = read_safetensors(path);
  if (a.tensors().size() != 2 * params_.size())
    fail("[adamw] {} holds {} tensors, expected {} (m and v of each parameter)", path.string(), a.tensors().size(),
         2 * params_.size());
  for (Param& p : params_) {
    for (auto [prefix, dst] : {std::pair<const char*, Tensor*>{"m.", &p.m}, {"v.", &p.v}}) {
      const StoredTensor* t = a.find(prefix + p.name);
      if (!t) fail("[adamw] {} has no tensor '{}{}'", path.string(), prefix, p.name);
      if (t->shape != p.stored_shape || t->dtype != DType::F32)
        fail("[adamw] {}: '{}' is {} {}, expected f32 {}", path.string(), t->name, dtype_name(t->dtype), t->shape_str(),
             shape_str(p.stored_shape));
      if (dst->device() == Device::CUDA) cuda::copy_to_device(dst->raw(), t->data, dst->nbytes());
      else std::memcpy(dst->data(), t->data, dst->nbytes());
    }
  }
  steps_ = steps;
}

double schedule_lr(int64_t s, int64_t max_steps, int64_t warmup_steps, double lr, double min_lr,
                   const std::string& schedule) {
  if (s < warmup_steps) return lr * double(s + 1) / double(warmup_steps);
  if (schedule == "constant") return lr;
  if (schedule != "cosine") fail("[train] unknown schedule '{}' (cosine or constant)", schedule);
  const double ratio = std::min(1.0, double(s - warmup_steps) / double(std::max<int64_t>(1, max_steps - warmup_steps)));
  return min_lr + 0.5 * (1.0 + std::cos(std::numbers::pi * ratio)) * (lr - min_lr);
}

double clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0.0 || norm <= max_norm) return 1.0;
  return max_norm / (norm + 1e-6);
}

}  // namespace mamba2::training
