// The training loop: set-up (tokenizer, model, tokenized data, optimiser, or all of it from the
// latest checkpoint), then per step grad_accum micro-batches of batch_size rows, the gradient
// weighted to the mean over every predicted position of the step, global-norm clipping, one AdamW
// update, metrics, periodic evaluation and checkpoints.
//
// Determinism: the model init comes from `seed`; the data order from an mt19937_64 seeded by it,
// which draws the key of each epoch's row permutation. The checkpoint holds the weights, the
// moments, the step, the data position (epoch, index in the epoch, epoch key) and the generator's
// state, so a resumed run takes the same rows and makes the same arithmetic as an uninterrupted
// one (the kernels give the same bits for the same thread count).
#include <fcntl.h>
#include <omp.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "io/atomic_file.h"
#include "core/device.h"
#include "core/file.h"
#include "core/json.h"
#include "cuda/runtime.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "mamba2/train.h"
#include "model/mamba2_grad.h"
#include "model/weights.h"
#include "train/checkpoint.h"
#include "train/collective.h"
#include "train/data.h"
#include "train/optimizer.h"

namespace mamba2 {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace training;

namespace {

// Settings a resumed run must share with the checkpoint's: they define the model and the rows.
constexpr const char* kFixedOnResume[] = {"model",      "init_from",  "tokenizer", "train", "val", "val_fraction",
                                          "seq_len",    "batch_size", "grad_accum", "seed"};

fs::path absolute_path(const fs::path& p) { return p.empty() ? p : fs::absolute(p).lexically_normal(); }

TrainConfig absolute_paths(TrainConfig c) {
  c.out = absolute_path(c.out);
  c.init_from = absolute_path(c.init_from);
  c.tokenizer = absolute_path(c.tokenizer);
  for (auto& p : c.train) p = absolute_path(p);
  for (auto& p : c.val) p = absolute_path(p);
  return c;
}

Tensor copy_of(const Tensor& t) {
  Tensor o = Tensor::empty(t.shape());
  std::memcpy(o.data(), t.data(), t.nbytes());
  return o;
}

// Owned, writable fp32 weights (a loaded model borrows read-only file mappings); tying kept.
ModelWeights clone_weights(const ModelWeights& w) {
  ModelWeights o;
  o.embedding = copy_of(w.embedding);
  for (const LayerWeights& l : w.layers)
    o.layers.push_back(l.map(copy_of));
  o.norm_f = copy_of(w.norm_f);
  o.lm_head = w.lm_head.data() == w.embedding.data() ? o.embedding : copy_of(w.lm_head);
  return o;
}

ModelConfig model_config(const TrainModelSpec& m, const Tokenizer& tok) {
  ModelConfig c = preset_config(m.preset);
  auto set = [](int64_t& field, int64_t v) {
    if (v > 0) field = v;
  };
  set(c.d_model, m.d_model);
  set(c.n_layer, m.n_layer);
  set(c.d_state, m.d_state);
  set(c.headdim, m.headdim);
  set(c.ngroups, m.ngroups);
  set(c.chunk_size, m.chunk_size);
  set(c.expand, m.expand);
  set(c.d_conv, m.d_conv);
  set(c.pad_vocab_size_multiple, m.pad_vocab_size_multiple);
  c.vocab_size = m.vocab_size > 0 ? m.vocab_size : tok.vocab_size();
  if (m.tie_embeddings) c.tie_embeddings = *m.tie_embeddings;
  if (c.mamba1()) c.dt_rank = (c.d_model + 15) / 16;  // "auto" for the width chosen
  c.validate("train config: model");
  return c;
}

void copy_text_file(const fs::path& from, const fs::path& to) {
  const std::string text = read_file(from, "[train]");
  AtomicFile f(to, "[train]");
  f.write(text.data(), text.size());
  f.commit();
}

// Where the trainer stands: what a checkpoint must hold besides weights and moments.
struct State {
  int64_t step = 0;
  int64_t epoch = 0;
  uint64_t index = 0;      // rows of this epoch already taken
  uint64_t epoch_key = 0;  // key of this epoch's permutation
  std::mt19937_64 rng;     // draws the epoch keys
  int64_t tokens_seen = 0;
  std::optional<double> best_val_loss;
  // f16 training's dynamic loss scale (as torch.cuda.amp.GradScaler): halved and the update
  // skipped when the gradients overflow, doubled after kScaleGrowthSteps good steps; 1 otherwise.
  double loss_scale = 1.0;
  int64_t good_steps = 0;
};
constexpr double kInitialLossScale = 65536.0;
constexpr int64_t kScaleGrowthSteps = 2000;

std::string rng_text(const std::mt19937_64& rng) {
  std::ostringstream s;
  s << rng;
  return s.str();
}

// An exclusive lock on <out>/.lock for the life of the run: two processes training into one folder
// would overwrite each other's checkpoints. The kernel drops it when the process ends.
class RunLock {
 public:
  explicit RunLock(const fs::path& out) {
    const fs::path path = out / ".lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("[train] cannot create {}", path.string());
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      fail("[train] another training process is using {}", out.string());
    }
  }
  ~RunLock() { ::close(fd_); }
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

class Trainer {
 public:
  Trainer(const TrainConfig& config, const TrainCallbacks& cb, const DataParallel* dp)
      : cfg_(absolute_paths(config)), cb_(cb) {
    if (dp) dp_ = *dp;
  }
  TrainResult run();

 private:
  void log(const std::string& s) const {
    if (cb_.on_message) cb_.on_message(s);
  }
  void setup();
  // Data parallel: rank 0 does the set-up and sends its trainer state, weights and moments; the
  // others make what it sent fit into (setup_follower).
  void setup_follower();
  void share_start();
  void prepare_data(bool prepare);
  void resume_from(const fs::path& dir);
  void apply_state(const SavedTrainerState& s, const std::string& where);
  // The sum over the ranks of layer `layer`'s gradients (-1: embedding, norm_f, an untied head),
  // each rank's weighted by `weight`, started beside the backward.
  void reduce_grads(int64_t layer, float weight);
  std::vector<std::pair<float*, size_t>> grad_buffers(int64_t layer);
  // Every gradient the optimiser reads is in some layer's all-reduce (else the ranks would drift).
  void check_reduced_grads();
  // Rank 0 (or the only process): the one that writes the run folder and evaluates.
  bool lead() const { return !comm_ || comm_->rank() == 0; }
  int64_t next_row();
  EvalInfo evaluate_val();
  std::string state_json() const;
  void save(int64_t keep);
  void write_final();
  // The weights as a model folder `name` in the run folder, replacing the one there atomically;
  // `extra` (a file name and its text) beside them.
  fs::path write_model_folder(const char* name, const std::pair<std::string, std::string>& extra = {});
  // The weights on dev_, and back on the host for writing.
  ModelWeights on_device(const ModelWeights& w) const { return dev_ == Device::CPU ? w : place_weights(w, dev_, DType::F32); }
  ModelWeights on_host() const { return place_weights(w_, Device::CPU, DType::F32); }
  void append_metrics(const json& line);

  TrainConfig cfg_;
  TrainCallbacks cb_;
  std::optional<DataParallel> dp_;
  std::unique_ptr<Collective> comm_;
  std::optional<RunLock> lock_;
  fs::path tokenizer_path_;
  std::optional<Tokenizer> tok_;
  ModelConfig mc_;
  Device dev_ = Device::CPU;
  ModelWeights w_;   // fp32 master weights, on dev_
  ModelWeights cw_;  // what the steps compute with: w_, or on the GPU its bf16 / f16 matrices (compute_weights)
  std::optional<Gradients> g_;
  std::optional<AdamWOptimizer> opt_;
  std::optional<TokenCorpus> train_corpus_, val_corpus_;
  CorpusRange train_range_, val_range_;
  bool has_val_ = false;
  int64_t rows_per_epoch_ = 0, max_steps_ = 0;
  double min_lr_ = 0.0;
  State st_;
  int64_t last_saved_step_ = -1;
};

void Trainer::setup() {
  validate_train_config(cfg_);
  if (cfg_.threads > 0) omp_set_num_threads(cfg_.threads);
  if (dp_) {
    const std::string device = default_device(cfg_.device);
    if (device != "cuda" && device != "cpu")
      fail("[train] data parallel trains on cuda:0, cuda:1, … of each node, or on CPU processes: --device {} does "
           "not go with it (cuda or cpu)", device);
    if (cfg_.batch_size % dp_->world != 0)
      fail("[train] batch_size (--batch-size) {} does not split over {} processes: each micro-batch's rows are "
           "divided evenly, so it must be a multiple of {}", cfg_.batch_size, dp_->world, dp_->world);
    if (device == "cuda") {
      dev_ = use_device(fmt::format("cuda:{}", dp_->local_rank), "[train] --gpus");
      comm_ = nccl_collective(dp_->comm_id, dp_->rank, dp_->world);
    } else {
      dev_ = Device::CPU;
      comm_ = host_collective(dp_->comm_id, dp_->rank, dp_->world);
    }
    if (!lead()) return setup_follower();
  } else {
    dev_ = use_device(cfg_.device, "[train] device");
  }
  fs::create_directories(cfg_.out);
  lock_.emplace(cfg_.out);
  remove_partial_checkpoints(cfg_.out);
  for (const char* name : {"final", "best"}) {  // a crash between write_model_folder's two renames
    const fs::path dir = cfg_.out / name, old = cfg_.out / fmt::format(".{}.old", name);
    if (!fs::exists(dir) && fs::exists(old)) fs::rename(old, dir);
  }
  const fs::path latest = latest_checkpoint(cfg_.out);
  if (!cfg_.resume && !latest.empty())
    fail("[train] {} already holds a run (latest checkpoint {}); pass --resume to continue it, or choose another --out",
         cfg_.out.string(), latest.string());
  if (cfg_.resume && latest.empty())
    fail("[train] --resume: {} holds no checkpoint ({} is missing)", cfg_.out.string(), (cfg_.out / "latest").string());

  tokenizer_path_ = cfg_.tokenizer.empty() ? cfg_.init_from / "tokenizer.json" : cfg_.tokenizer;
  tok_.emplace(Tokenizer::load(tokenizer_path_));

  // The model: from the checkpoint when resuming, else from init_from or the preset's init.
  if (!cfg_.init_from.empty()) {
    const Model m = Model::load(cfg_.init_from).to(Device::CPU, DType::F32);  // a quantized folder's, widened
    mc_ = m.config();
    if (latest.empty()) w_ = on_device(clone_weights(m.weights()));
  } else {
    mc_ = model_config(*cfg_.model, *tok_);
    if (latest.empty()) w_ = on_device(init_weights(mc_, cfg_.seed));
  }
  mc_.layout = CheckpointLayout::HuggingFace;
  if (tok_->vocab_size() > mc_.vocab_padded())
    fail("[train] the tokenizer {} has {} ids but the model only {} embedding rows", tokenizer_path_.string(),
         tok_->vocab_size(), mc_.vocab_padded());
  min_lr_ = cfg_.min_lr ? *cfg_.min_lr : cfg_.lr / 10.0;

  prepare_data(true);
  st_.rng.seed(cfg_.seed ^ 0x6d616d6261322d64ull);  // "mamba2-d": the data order's own stream
  st_.epoch_key = st_.rng();

  if (!latest.empty()) {
    resume_from(latest);
  } else {
    g_.emplace(make_gradients(w_));
    opt_.emplace(w_, *g_, mc_, AdamWSettings{cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay});
    AtomicFile f(cfg_.out / "metrics.jsonl", "[train]");
    f.commit();
  }
  // The run's dtype is the final model's; on the GPU the projections also compute in it.
  cw_ = compute_weights(w_, dev_ == Device::CUDA ? *parse_dtype(cfg_.dtype) : DType::F32);
  opt_->set_copies(cw_, mc_);
  if (cw_.embedding.dtype() == DType::F16 && latest.empty()) st_.loss_scale = kInitialLossScale;
  if (comm_) {
    check_reduced_grads();
    share_start();
  }
}

void Trainer::setup_follower() {
  tokenizer_path_ = cfg_.tokenizer.empty() ? cfg_.init_from / "tokenizer.json" : cfg_.tokenizer;
  tok_.emplace(Tokenizer::load(tokenizer_path_));
  mc_ = cfg_.init_from.empty() ? model_config(*cfg_.model, *tok_) : Model::load(cfg_.init_from).config();
  mc_.layout = CheckpointLayout::HuggingFace;
  min_lr_ = cfg_.min_lr ? *cfg_.min_lr : cfg_.lr / 10.0;
  // Rank 0's state: sent once it has prepared the data, so the data is there to open.
  uint64_t n = 0;
  comm_->broadcast_host(&n, sizeof n, 0);
  std::string state(n, '\0');
  comm_->broadcast_host(state.data(), n, 0);
  const std::string where = fmt::format("[train] rank {}", comm_->rank());
  const SavedTrainerState s = parse_trainer_state(state, where + ": rank 0's trainer state");
  prepare_data(false);
  if (s.train_fingerprint != train_corpus_->fingerprint() ||
      s.val_fingerprint != (val_corpus_ ? val_corpus_->fingerprint() : std::string()))
    fail("{}: {} holds other data than rank 0 prepared: every node must see the same --out (a shared filesystem)",
         where, (cfg_.out / "data").string());
  w_ = on_device(init_weights(mc_, cfg_.seed));  // the shapes; the values come from rank 0
  g_.emplace(make_gradients(w_));
  opt_.emplace(w_, *g_, mc_, AdamWSettings{cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay});
  apply_state(s, where);
  check_reduced_grads();
  share_start();
  opt_->set_steps(st_.step);
  cw_ = compute_weights(w_, dev_ == Device::CUDA ? *parse_dtype(cfg_.dtype) : DType::F32);
  opt_->set_copies(cw_, mc_);
}

void Trainer::share_start() {
  if (lead()) {
    std::string state = state_json();
    uint64_t n = state.size();
    comm_->broadcast_host(&n, sizeof n, 0);
    comm_->broadcast_host(state.data(), n, 0);
  }
  for (Param& p : opt_->params())
    for (Tensor* t : {p.value, &p.m, &p.v}) comm_->broadcast(*t, 0);
}

std::vector<std::pair<float*, size_t>> Trainer::grad_buffers(int64_t layer) {
  std::vector<std::pair<float*, size_t>> bufs;
  auto add = [&](Tensor& t) { bufs.emplace_back(t.data(), size_t(t.numel())); };
  if (layer >= 0) {
    for (Tensor* t : g_->layers[size_t(layer)].present()) add(*t);
  } else {
    add(g_->embedding);
    add(g_->norm_f);
    if (g_->lm_head.raw() != g_->embedding.raw()) add(g_->lm_head);
  }
  return bufs;
}

void Trainer::reduce_grads(int64_t layer, float weight) { comm_->sum_async(grad_buffers(layer), weight); }

void Trainer::check_reduced_grads() {
  size_t reduced = 0, all = 0;
  for (int64_t layer = -1; layer < mc_.n_layer; ++layer)
    for (const auto& b : grad_buffers(layer)) reduced += b.second;
  for (const Param& p : opt_->params()) all += size_t(p.grad->numel());
  if (reduced != all)
    fail("[train] data parallel: the all-reduce covers {} gradient elements but the optimiser updates {}", reduced, all);
}

void Trainer::prepare_data(bool prepare) {
  const uint64_t tok_hash = prepare ? hash_file(tokenizer_path_) : 0;
  const fs::path data_dir = cfg_.out / "data";
  if (prepare)
    prepare_corpus(*tok_, tok_hash, expand_sources(cfg_.train, "train"), data_dir, "train",
                   [&](const std::string& s) { log(s); });
  train_corpus_.emplace(TokenCorpus::open(data_dir, "train"));
  train_range_ = {&*train_corpus_, 0, train_corpus_->size()};
  if (!cfg_.val.empty()) {
    if (prepare)
      prepare_corpus(*tok_, tok_hash, expand_sources(cfg_.val, "val"), data_dir, "val",
                     [&](const std::string& s) { log(s); });
    val_corpus_.emplace(TokenCorpus::open(data_dir, "val"));
    val_range_ = {&*val_corpus_, 0, val_corpus_->size()};
    has_val_ = true;
  } else if (cfg_.val_fraction > 0.0) {
    const int64_t n = train_corpus_->size();
    const int64_t cut = n - std::llround(cfg_.val_fraction * double(n));
    val_range_ = {&*train_corpus_, cut, n};
    train_range_.end = cut;
    has_val_ = true;
  }
  rows_per_epoch_ = train_range_.rows(cfg_.seq_len);
  if (rows_per_epoch_ == 0)
    fail("[train] the training split has {} tokens, fewer than seq_len {}", train_range_.end - train_range_.begin,
         cfg_.seq_len);
  if (has_val_ && val_range_.rows(cfg_.seq_len) == 0)
    fail("[train] the validation split ({}) has {} tokens, fewer than seq_len {}",
         cfg_.val.empty() ? "val_fraction" : "val", val_range_.end - val_range_.begin, cfg_.seq_len);
  log(fmt::format("data: {} training rows of {} tokens per epoch{}", rows_per_epoch_, cfg_.seq_len,
                  has_val_ ? fmt::format(", {} validation rows", val_range_.rows(cfg_.seq_len)) : ", no validation"));
  const int64_t rows_per_step = cfg_.batch_size * cfg_.grad_accum;
  max_steps_ = cfg_.max_steps > 0 ? cfg_.max_steps
                                  : std::max<int64_t>(1, int64_t(std::ceil(cfg_.epochs * double(rows_per_epoch_) /
                                                                           double(rows_per_step))));
}

void Trainer::resume_from(const fs::path& dir) {
  const fs::path state_path = dir / "trainer_state.json";
  const SavedTrainerState s = read_trainer_state(dir);
  const json saved = json::parse(train_config_to_json(parse_train_config(s.config_json, state_path.string()))),
             now = json::parse(train_config_to_json(cfg_));
  for (const char* k : kFixedOnResume) {
    const json a = saved.contains(k) ? saved[k] : json(), b = now.contains(k) ? now[k] : json();
    if (a != b)
      fail("[train] --resume: '{}' is {} in the run's checkpoint but {} now; it must not change (start a new --out)", k,
           a.dump(), b.dump());
  }
  if (s.train_fingerprint != train_corpus_->fingerprint() ||
      s.val_fingerprint != (val_corpus_ ? val_corpus_->fingerprint() : std::string()))
    fail("[train] --resume: the training or validation data changed since {} (the files or the tokenizer differ)",
         dir.string());

  auto archive = std::make_shared<const TensorArchive>(open_checkpoint(dir));
  w_ = on_device(clone_weights(load_weights(archive, mc_)));
  g_.emplace(make_gradients(w_));
  opt_.emplace(w_, *g_, mc_, AdamWSettings{cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay});
  apply_state(s, state_path.string());
  opt_->load(dir / "optimizer.safetensors", st_.step);

  // Metrics past the checkpoint belong to the interrupted continuation: drop them.
  std::ifstream in(cfg_.out / "metrics.jsonl");
  std::string kept, line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      if (parse_json(line, "[train] metrics.jsonl").at("step").get<int64_t>() > st_.step) continue;
    } catch (const std::exception&) {  // a damaged line: not kept
      continue;
    }
    kept += line + "\n";
  }
  AtomicFile f(cfg_.out / "metrics.jsonl", "[train]");
  f.write(kept.data(), kept.size());
  f.commit();
  log(fmt::format("resumed from {} at step {} (epoch {}, row {} of {})", dir.string(), st_.step, st_.epoch, st_.index,
                  rows_per_epoch_));
}

void Trainer::apply_state(const SavedTrainerState& s, const std::string& where) {
  st_.step = s.step;
  st_.epoch = s.epoch;
  st_.index = s.index;
  st_.epoch_key = s.epoch_key;
  std::istringstream rs(s.rng);
  rs >> st_.rng;
  if (!rs) fail("[train] {}: the RNG state cannot be read", where);
  st_.tokens_seen = s.tokens_seen;
  st_.best_val_loss = s.best_val_loss;
  st_.loss_scale = s.loss_scale;
  st_.good_steps = s.good_steps;
  if (st_.index > uint64_t(rows_per_epoch_))
    fail("[train] {}: data position {} is past the epoch's {} rows", where, st_.index, rows_per_epoch_);
  last_saved_step_ = st_.step;
}

int64_t Trainer::next_row() {
  if (st_.index == uint64_t(rows_per_epoch_)) {
    ++st_.epoch;
    st_.index = 0;
    st_.epoch_key = st_.rng();
  }
  return int64_t(Permutation(uint64_t(rows_per_epoch_), st_.epoch_key)(st_.index++));
}

EvalInfo Trainer::evaluate_val() {
  EvalInfo e;
  e.step = st_.step;
  const int64_t total = val_range_.rows(cfg_.seq_len);
  const int64_t n = cfg_.eval_rows > 0 ? std::min(cfg_.eval_rows, total) : total;
  double nats = 0.0;
  int64_t bytes = 0;
  for (int64_t r0 = 0; r0 < n; r0 += cfg_.batch_size) {
    Batch b;
    for (int64_t r = r0; r < std::min(n, r0 + cfg_.batch_size); ++r) val_range_.append_row(cfg_.seq_len, r, b, &*tok_);
    if (b.predictions == 0) continue;
    nats += lm_loss(mc_, cw_, b.ids, b.lengths) * double(b.predictions);
    e.predictions += b.predictions;
    bytes += b.target_bytes;
  }
  e.rows = n;
  e.val_loss = e.predictions ? nats / double(e.predictions) : std::nan("");
  e.val_bpb = bytes ? nats / std::log(2.0) / double(bytes) : std::nan("");
  return e;
}

std::string Trainer::state_json() const {
  json s = {{"format", kTrainerStateFormat},
            {"version", 1},
            {"step", st_.step},
            {"max_steps", max_steps_},
            {"epoch", st_.epoch},
            {"index", st_.index},
            {"rows_per_epoch", rows_per_epoch_},
            {"epoch_key", st_.epoch_key},
            {"rng", rng_text(st_.rng)},
            {"tokens_seen", st_.tokens_seen},
            {"best_val_loss", st_.best_val_loss ? json(*st_.best_val_loss) : json(nullptr)},
            {"loss_scale", st_.loss_scale},
            {"good_steps", st_.good_steps},
            {"train_fingerprint", train_corpus_->fingerprint()},
            {"val_fingerprint", val_corpus_ ? val_corpus_->fingerprint() : std::string()},
            {"config", json::parse(train_config_to_json(cfg_))}};
  return s.dump(2) + "\n";
}

void Trainer::save(int64_t keep) {
  if (!lead()) {
    last_saved_step_ = st_.step;
    return;
  }
  const ModelWeights host = dev_ == Device::CPU ? ModelWeights{} : on_host();
  const CheckpointFiles files{&mc_, dev_ == Device::CPU ? &w_ : &host, &*opt_, tokenizer_path_, state_json()};
  const fs::path dir = save_checkpoint(cfg_.out, st_.step, files, keep);
  last_saved_step_ = st_.step;
  log(fmt::format("saved checkpoint {}", dir.string()));
}

fs::path Trainer::write_model_folder(const char* name, const std::pair<std::string, std::string>& extra) {
  const fs::path dir = cfg_.out / name, tmp = cfg_.out / fmt::format(".{}.tmp", name),
                 old = cfg_.out / fmt::format(".{}.old", name);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  save_model(tmp, mc_, dev_ == Device::CPU ? w_ : on_host(), *parse_dtype(cfg_.dtype));  // validated with the config
  copy_text_file(tokenizer_path_, tmp / "tokenizer.json");
  if (!extra.first.empty()) {
    AtomicFile f(tmp / extra.first, "[train]");
    f.write(extra.second.data(), extra.second.size());
    f.commit();
  }
  // The old folder moves aside before the new one takes its name: a crash leaves one of them.
  fs::remove_all(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(tmp, dir);
  fs::remove_all(old);
  return dir;
}

void Trainer::write_final() {
  if (!lead()) return;
  log(fmt::format("wrote the final model to {}", write_model_folder("final").string()));
}

void Trainer::append_metrics(const json& line) {
  if (!lead()) return;
  std::ofstream f(cfg_.out / "metrics.jsonl", std::ios::app);
  f << line.dump() << "\n";
  if (!f) fail("[train] cannot write {}", (cfg_.out / "metrics.jsonl").string());
}

TrainResult Trainer::run() {
  setup();
  TrainResult result;
  result.step = st_.step;
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  int64_t steps_here = 0, tokens_here = 0;
  double step_seconds = 0.0;
  log(fmt::format("training {} parameters for {} steps ({} rows of {} tokens per step) on the {}, from step {}",
                  mc_.parameter_count(), max_steps_, cfg_.batch_size * cfg_.grad_accum, cfg_.seq_len,
                  dev_ == Device::CPU ? std::string("CPU") : cuda::device_description(cuda::current_device()), st_.step));

  while (st_.step < max_steps_) {
    const auto t0 = clock::now();
    // The step's rows, then the weighting: each lm_loss_and_grad call adds the gradient of its
    // own mean; holding the sum scaled by 1/n of the latest micro-batch, a rescale by
    // n_prev / n_next before each call and n_last / N at the end give the mean over all N.
    // Data parallel: every rank draws every row of the step (the data position stays the same
    // everywhere) and computes on its share of each micro-batch, `mine`.
    std::vector<Batch> micro(size_t(cfg_.grad_accum)), mine(comm_ ? micro.size() : 0);
    const int64_t share = comm_ ? cfg_.batch_size / comm_->world() : cfg_.batch_size;
    const int64_t first = comm_ ? share * comm_->rank() : 0;
    int64_t N = 0;
    for (size_t k = 0; k < micro.size(); ++k) {
      for (int64_t r = 0; r < cfg_.batch_size; ++r) {
        const int64_t row = next_row();
        train_range_.append_row(cfg_.seq_len, row, micro[k]);
        if (comm_ && r >= first && r < first + share) train_range_.append_row(cfg_.seq_len, row, mine[k]);
      }
      N += micro[k].predictions;
    }
    if (N == 0) fail("[train] step {}: its rows have no positions to predict (documents of one token?)", st_.step + 1);
    const std::vector<Batch>& local = comm_ ? mine : micro;
    int64_t last_k = -1;
    for (size_t k = 0; k < local.size(); ++k)
      if (local[k].predictions > 0) last_k = int64_t(k);
    zero_gradients(*g_);
    double loss_sum = 0.0;
    int64_t prev = 0;
    for (size_t k = 0; k < local.size(); ++k) {
      const Batch& b = local[k];
      if (b.predictions == 0) continue;
      if (prev > 0 && prev != b.predictions) opt_->scale_grads(double(prev) / double(b.predictions));
      // The last micro-batch's backward finishes the step's gradients layer by layer: each goes to
      // the all-reduce as it is done, weighted from this rank's mean to its part of the step's.
      GradsReady ready;
      if (comm_ && int64_t(k) == last_k)
        ready = [&](int64_t layer) { reduce_grads(layer, float(double(b.predictions) / double(N))); };
      loss_sum += lm_loss_and_grad(mc_, cw_, b.ids, b.lengths, *g_, st_.loss_scale, ready) * double(b.predictions);
      prev = b.predictions;
    }
    double factor = double(prev) / double(N) / st_.loss_scale;
    if (comm_) {
      if (last_k < 0)  // nothing to predict in this rank's rows: its zero gradients join the sum
        for (int64_t layer = mc_.n_layer - 1; layer >= -1; --layer) reduce_grads(layer, 0.0f);
      comm_->join();
      const double mine_sum = loss_sum;
      loss_sum = 0.0;
      for (double part : comm_->all_gather(mine_sum)) loss_sum += part;  // in rank order
      factor = 1.0 / st_.loss_scale;
    }
    const double loss = loss_sum / double(N);
    const double norm = std::sqrt(opt_->grad_sum_squares()) * factor;
    const bool scaled = cw_.embedding.dtype() == DType::F16;  // even once halved down to 1
    if (!std::isfinite(loss) || (!std::isfinite(norm) && !scaled))
      fail("[train] step {}: the loss ({}) or the gradient norm ({}) is not finite; the weights were not updated "
           "(a lower lr or grad_clip may help)",
           st_.step + 1, loss, norm);
    const double lr = schedule_lr(st_.step, max_steps_, cfg_.warmup_steps, cfg_.lr, min_lr_, cfg_.schedule);
    const bool skipped = !std::isfinite(norm);  // f16: the scaled gradients overflowed
    if (skipped) {
      st_.loss_scale /= 2.0;
      st_.good_steps = 0;
      log(fmt::format("step {}: the f16 gradients overflowed at loss scale {}; the update is skipped, the scale halved",
                      st_.step + 1, st_.loss_scale * 2.0));
    } else {
      opt_->step(lr, factor * clip_coefficient(norm, cfg_.grad_clip));  // cw_'s copies too
      if (scaled && ++st_.good_steps == kScaleGrowthSteps) st_.loss_scale *= 2.0, st_.good_steps = 0;
    }
    ++st_.step;
    const int64_t tokens = cfg_.batch_size * cfg_.grad_accum * cfg_.seq_len;
    st_.tokens_seen += tokens;
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    ++steps_here;
    step_seconds += dt;
    result.tokens_per_s = double(tokens_here + tokens) / step_seconds;
    tokens_here += tokens;
    const double elapsed = std::chrono::duration<double>(clock::now() - t_start).count();

    StepInfo info;
    info.step = st_.step;
    info.max_steps = max_steps_;
    info.epoch = st_.epoch;
    info.loss = loss;
    info.lr = lr;
    info.grad_norm = norm;
    info.tokens = tokens;
    info.tokens_per_s = dt > 0 ? double(tokens) / dt : 0.0;
    info.elapsed_s = elapsed;
    info.eta_s = elapsed / double(steps_here) * double(max_steps_ - st_.step);
    json line = {{"step", st_.step},   {"epoch", st_.epoch}, {"loss", loss},
                 {"lr", lr},           {"grad_norm", skipped ? json(nullptr) : json(norm)},  {"tokens", st_.tokens_seen},
                 {"tokens_per_s", info.tokens_per_s}, {"elapsed_s", elapsed}};
    if (scaled) line["loss_scale"] = st_.loss_scale;
    if (skipped) line["skipped"] = true;
    result.step = st_.step;
    result.last_loss = loss;

    const bool last = st_.step == max_steps_;
    if (has_val_ && lead() && ((cfg_.eval_interval > 0 && st_.step % cfg_.eval_interval == 0) || last)) {
      const EvalInfo e = evaluate_val();
      line["val_loss"] = std::isfinite(e.val_loss) ? json(e.val_loss) : json(nullptr);
      line["val_bpb"] = std::isfinite(e.val_bpb) ? json(e.val_bpb) : json(nullptr);
      if (std::isfinite(e.val_loss) && (!st_.best_val_loss || e.val_loss < *st_.best_val_loss)) {
        st_.best_val_loss = e.val_loss;
        if (cfg_.keep_best) {
          const json best = {{"step", st_.step}, {"val_loss", e.val_loss},
                             {"val_bpb", std::isfinite(e.val_bpb) ? json(e.val_bpb) : json(nullptr)}};
          result.best_dir = write_model_folder("best", {"best.json", best.dump(2) + "\n"});
          log(fmt::format("validation loss {:.4f} is the lowest so far: the model is in {}", e.val_loss,
                          result.best_dir.string()));
        }
      }
      result.last_val_loss = e.val_loss;
      if (cb_.on_eval) cb_.on_eval(e);
    }
    append_metrics(line);
    StepAction action = cb_.on_step ? cb_.on_step(info) : StepAction::Continue;
    if (comm_) {  // rank 0's (Ctrl-C reaches it; the others ignore SIGINT)
      int a = int(action);
      comm_->broadcast_host(&a, sizeof a, 0);
      action = StepAction(a);
    }
    if (action == StepAction::Stop) return result;  // as a crash would: nothing more is written
    if ((cfg_.checkpoint_interval > 0 && st_.step % cfg_.checkpoint_interval == 0) || last ||
        action == StepAction::SaveAndStop)
      save(cfg_.keep_checkpoints);
    if (action == StepAction::SaveAndStop) break;
  }
  if (st_.step == max_steps_) {
    if (last_saved_step_ != st_.step) save(cfg_.keep_checkpoints);
    write_final();
    result.finished = true;
    result.final_dir = cfg_.out / "final";
  }
  return result;
}

}  // namespace

TrainResult train(const TrainConfig& config, const TrainCallbacks& callbacks, const DataParallel* data_parallel) {
  Trainer t(config, callbacks, data_parallel);
  return t.run();
}

}  // namespace mamba2
