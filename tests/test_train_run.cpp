// Training end to end on a tiny model and corpus: the loss goes down, gradient accumulation equals
// a bigger batch, a run stopped and resumed equals an uninterrupted one bit for bit, a crash in
// the middle of a save leaves the previous checkpoint as the latest, the final folder loads; the
// evaluation of a text against lm_loss; config errors; the CLI.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cuda/collectives.h"
#include "cuda_test_support.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "mamba2/train.h"
#include "model/mamba2_grad.h"
#include "test_support.h"
#include "train/checkpoint.h"

namespace mamba2 {
namespace {

namespace fs = std::filesystem;
using test::kTinyEos;
using test::kTinyNoEos;
using nlohmann::json;


// Documents of simple sentences over a small vocabulary: easy to learn.
void write_corpus(const fs::path& dir, int docs, int sentences, uint32_t seed = 1) {
  fs::create_directories(dir);
  const char* subj[] = {"the cat", "a dog", "my friend", "the old man", "a bird"};
  const char* verb[] = {"sat on", "ran to", "looked at", "jumped over", "found"};
  const char* obj[] = {"the mat.", "the park.", "a red ball.", "the tall tree.", "his hat."};
  std::mt19937 rng(seed);
  for (int d = 0; d < docs; ++d) {
    std::string text;
    for (int s = 0; s < sentences; ++s)
      text += std::string(subj[rng() % 5]) + " " + verb[rng() % 5] + " " + obj[rng() % 5] + (s % 4 == 3 ? "\n" : " ");
    test::write_file(dir / fmt::format("doc_{:02}.txt", d), text);
  }
}

TrainConfig tiny_config(const fs::path& out, const fs::path& corpus, const std::string& tokenizer) {
  TrainConfig c;
  c.out = out;
  c.model.emplace();
  c.model->d_model = 32;
  c.model->n_layer = 2;
  c.model->d_state = 16;
  c.model->headdim = 16;
  c.model->chunk_size = 16;
  c.tokenizer = tokenizer;
  c.train = {corpus};
  c.val_fraction = 0.1;
  c.seq_len = 32;
  c.batch_size = 2;
  c.grad_accum = 2;
  c.max_steps = 12;
  c.lr = 1e-2;
  c.warmup_steps = 2;
  c.eval_interval = 3;
  c.eval_rows = 0;
  c.checkpoint_interval = 4;
  c.keep_checkpoints = 0;
  c.device = "cpu";  // the GPU's runs are their own tests
  return c;
}

// A port p with p + 1 free too (a CPU run over two "nodes" uses both), free now.
int free_port_pair() {
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int a = ::socket(AF_INET, SOCK_STREAM, 0), b = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    int port = 0;
    if (::bind(a, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 &&
        ::getsockname(a, reinterpret_cast<sockaddr*>(&sa), &len) == 0 && ntohs(sa.sin_port) < 65535) {
      port = ntohs(sa.sin_port);
      sa.sin_port = htons(uint16_t(port + 1));
      if (::bind(b, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) port = 0;
    }
    ::close(a);
    ::close(b);
    if (port) return port;
  }
  return 29700;
}

// The metrics lines without the timing fields.
std::vector<json> metrics(const fs::path& out) {
  std::vector<json> lines;
  std::istringstream in(test::read_file(out / "metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    j.erase("elapsed_s");
    j.erase("tokens_per_s");
    lines.push_back(j);
  }
  return lines;
}

std::vector<float> all_weights(const Model& m) {
  std::vector<float> v;
  for (const auto& nt : hf_named_tensors(m.weights(), m.config()))
    v.insert(v.end(), nt.tensor->data(), nt.tensor->data() + nt.tensor->numel());
  return v;
}

TEST(TrainRun, LossGoesDownAndTheFinalModelLoads) {
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 10, 12);
  TrainConfig c = tiny_config(tmp / "run", tmp / "corpus", kTinyEos);
  c.max_steps = 40;
  c.batch_size = 4;
  c.grad_accum = 1;
  c.eval_interval = 20;
  c.checkpoint_interval = 0;
  std::vector<std::string> messages;
  int steps_seen = 0;
  TrainCallbacks cb;
  cb.on_message = [&](const std::string& m) { messages.push_back(m); };
  cb.on_step = [&](const StepInfo& s) {
    EXPECT_EQ(s.step, ++steps_seen);
    EXPECT_EQ(s.max_steps, 40);
    EXPECT_EQ(s.tokens, 4 * 32);
    return StepAction::Continue;
  };
  const TrainResult r = train(c, cb);
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.step, 40);
  const std::vector<json> m = metrics(c.out);
  ASSERT_EQ(m.size(), 40u);
  const double first = m[0]["loss"], last = m[39]["loss"];
  // From about ln(720) = 6.6 (uniform) to well under half of it on this repetitive text.
  EXPECT_GT(first, 5.5);
  EXPECT_LT(last, 3.0) << "first " << first;
  std::printf("tiny model, 40 steps: loss %.3f -> %.3f, val_loss %.3f\n", first, last, double(m[39]["val_loss"]));
  ASSERT_TRUE(m[19].contains("val_loss") && m[39].contains("val_loss"));
  EXPECT_LT(double(m[39]["val_loss"]), double(m[19]["val_loss"]) + 0.2);
  EXPECT_LT(double(m[39]["val_loss"]), 3.5);
  EXPECT_GT(double(m[39]["val_bpb"]), 0.0);
  EXPECT_FALSE(m[5].contains("val_loss"));
  // The last step's lr is near min_lr (lr/10), the warmup's first lr/2.
  EXPECT_NEAR(double(m[0]["lr"]), 5e-3, 1e-12);
  EXPECT_LT(double(m[39]["lr"]), 1.1e-3);

  // The final folder is a model folder the engine loads, with the tokenizer beside it.
  const Model model = Model::load(c.out / "final");
  const Tokenizer tok = Tokenizer::load(c.out / "final" / "tokenizer.json");
  EXPECT_EQ(model.config().d_model, 32);
  EXPECT_EQ(model.vocab(), 720);
  // Its loss on the corpus matches the last training losses.
  const EvalResult e = evaluate(model, tok, test::read_file(tmp / "corpus" / "doc_03.txt"));
  EXPECT_LT(e.loss, 3.5);
  EXPECT_NE(test::read_file(c.out / "latest").find("checkpoints/step-40"), std::string::npos);
}

// One micro-batch of two rows or two micro-batches of one row: the same gradient (the mean over
// every predicted position of the step), so the same loss, norm and update up to the fp32
// summation order. Without an EOS the rows predict different numbers of positions, which the
// weighting must account for.
TEST(TrainRun, GradAccumEqualsABiggerBatch) {
  for (const std::string& tok : {kTinyEos, kTinyNoEos}) {
    SCOPED_TRACE(tok);
    test::TempDir tmp;
    write_corpus(tmp / "corpus", 30, 3);  // short documents: several boundaries per row
    TrainConfig a = tiny_config(tmp / "a", tmp / "corpus", tok);
    a.max_steps = 2;
    a.warmup_steps = 0;
    a.eval_interval = 0;
    a.batch_size = 2;
    a.grad_accum = 1;
    a.grad_clip = 0.5;  // clipping applies to the weighted gradient
    TrainConfig b = a;
    b.out = tmp / "b";
    b.batch_size = 1;
    b.grad_accum = 2;
    train(a);
    train(b);
    const auto ma = metrics(a.out), mb = metrics(b.out);
    ASSERT_EQ(ma.size(), 2u);
    ASSERT_EQ(mb.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_NEAR(double(ma[i]["loss"]), double(mb[i]["loss"]), 1e-6 * double(ma[i]["loss"]));
      EXPECT_NEAR(double(ma[i]["grad_norm"]), double(mb[i]["grad_norm"]), 1e-5 * double(ma[i]["grad_norm"]));
    }
    const Model wa = Model::load(a.out / "final"), wb = Model::load(b.out / "final");
    const Model w0 = Model::load(a.out / "checkpoints" / "step-2");
    std::vector<float> da = all_weights(wa), db = all_weights(wb);
    // The updates of two steps (lr 1e-2) agree to 1e-4 relative (measured ~1e-6).
    const std::vector<float> init = [&] {
      ModelConfig mc = wa.config();
      ModelWeights w = init_weights(mc, a.seed);
      std::vector<float> v;
      for (const auto& nt : hf_named_tensors(w, mc)) v.insert(v.end(), nt.tensor->data(), nt.tensor->data() + nt.tensor->numel());
      return v;
    }();
    for (size_t i = 0; i < da.size(); ++i) {
      da[i] -= init[i];
      db[i] -= init[i];
    }
    const double err = test::rel_l2(db.data(), da.data(), da.size());
    EXPECT_LE(err, 1e-4);
    std::printf("grad accumulation vs batch: update relative L2 %.2e, loss %.17g vs %.17g\n", err,
                double(ma[0]["loss"]), double(mb[0]["loss"]));
    EXPECT_EQ(all_weights(w0), all_weights(wa));  // the last checkpoint is the final model
  }
}

// Stopped at step 6 (a checkpoint at 4), resumed to 12: the same weights, moments and metrics as
// the run that never stopped, bit for bit. The run crosses epochs (the RNG draws new keys), uses
// accumulation and evaluates every 3 steps.
// On the CPU and, where there is one, on the GPU.
TEST(TrainRun, ResumeIsExact) {
  using Run = std::pair<std::string, std::string>;  // device, tokenizer
  for (const auto& [device, tok] :
       {Run{"cpu", kTinyEos}, Run{"cpu", kTinyNoEos}, Run{"cuda", kTinyEos}, Run{"cuda", kTinyNoEos}}) {
    if (device == "cuda" && cuda::device_count() == 0) continue;
    SCOPED_TRACE(tok + " on the " + device);
    test::TempDir tmp;
    write_corpus(tmp / "corpus", 8, 10);
    TrainConfig straight = tiny_config(tmp / "straight", tmp / "corpus", tok);
    straight.device = device;
    train(straight);
    TrainConfig crashed = straight;
    crashed.out = tmp / "crashed";
    TrainCallbacks cb;
    cb.on_step = [](const StepInfo& s) { return s.step == 6 ? StepAction::Stop : StepAction::Continue; };
    const TrainResult r1 = train(crashed, cb);
    EXPECT_FALSE(r1.finished);
    EXPECT_EQ(r1.step, 6);
    EXPECT_EQ(metrics(crashed.out).size(), 6u);
    const json st = json::parse(test::read_file(crashed.out / "checkpoints" / "step-4" / "trainer_state.json"));
    EXPECT_EQ(st["step"], 4);
    EXPECT_GE(int64_t(st["rows_per_epoch"]) , 8);

    crashed.resume = true;
    const TrainResult r2 = train(crashed);
    EXPECT_TRUE(r2.finished);
    const auto ms = metrics(straight.out), mc = metrics(crashed.out);
    ASSERT_EQ(ms.size(), 12u);
    EXPECT_EQ(ms, mc);
    EXPECT_GE(int64_t(ms[11]["epoch"]), 1);
    EXPECT_TRUE(ms[8].contains("val_loss"));
    for (const char* f : {"final/model.safetensors", "checkpoints/step-12/optimizer.safetensors",
                          "checkpoints/step-12/model.safetensors", "checkpoints/step-8/model.safetensors"}) {
      const std::string a = test::read_file(straight.out / f), b = test::read_file(crashed.out / f);
      EXPECT_GT(a.size(), 1000u) << f;
      EXPECT_TRUE(a == b) << f;
    }
    json a = json::parse(test::read_file(straight.out / "checkpoints/step-12/trainer_state.json"));
    json b = json::parse(test::read_file(crashed.out / "checkpoints/step-12/trainer_state.json"));
    a.erase("config");
    b.erase("config");
    EXPECT_EQ(a, b);
  }
}

// fp32 on both devices, the same rows: the GPU's losses follow the CPU's. Only the summation
// orders differ (cuBLASLt against BLAS, block trees against SIMD lanes), ~1e-7 relative a step,
// amplified by 12 Adam steps at lr 1e-2 on a model of 2 layers: 1e-4 relative bounds it with room.
TEST(TrainRun, GpuFollowsTheCpuLossCurve) {
  MAMBA2_REQUIRE_GPU();
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 8, 10);
  TrainConfig on_cpu = tiny_config(tmp / "cpu", tmp / "corpus", kTinyEos), on_gpu = on_cpu;
  on_gpu.out = tmp / "gpu";
  on_gpu.device = "cuda";
  train(on_cpu);
  train(on_gpu);
  const auto mc = metrics(on_cpu.out), mg = metrics(on_gpu.out);
  ASSERT_EQ(mc.size(), mg.size());
  double worst = 0.0;
  for (size_t i = 0; i < mc.size(); ++i) {
    for (const char* k : {"loss", "grad_norm", "val_loss"}) {
      if (!mc[i].contains(k)) continue;
      const double a = mc[i][k], b = mg[i][k];
      EXPECT_NEAR(b, a, 1e-4 * std::abs(a)) << k << " at step " << i + 1;
      worst = std::max(worst, std::abs(b - a) / std::abs(a));
    }
  }
  const Model a = Model::load(on_cpu.out / "final"), b = Model::load(on_gpu.out / "final");
  const std::vector<float> wa = all_weights(a), wb = all_weights(b);
  EXPECT_LE(test::rel_l2(wb.data(), wa.data(), wa.size()), 1e-4);
  std::printf("[train cuda] 12 steps: worst relative difference of loss, norm, val_loss %.2e; final weights %.2e\n",
              worst, test::rel_l2(wb.data(), wa.data(), wa.size()));

  // Mixed precision: bf16 projections (fp32 masters, gradients, moments). Each step's loss carries
  // the bf16 operands' ~4e-3 relative error, which the updates carry on: 3e-2 relative a step over
  // 12 steps; the run resumes bit for bit as in fp32.
  TrainConfig bf16 = on_gpu;
  bf16.out = tmp / "bf16";
  bf16.dtype = "bf16";
  train(bf16);
  const auto mb = metrics(bf16.out);
  ASSERT_EQ(mb.size(), mc.size());
  double worst_bf16 = 0.0;
  for (size_t i = 0; i < mc.size(); ++i) {
    const double x = mc[i]["loss"], y = mb[i]["loss"];
    EXPECT_NEAR(y, x, 3e-2 * x) << "bf16 loss at step " << i + 1;
    worst_bf16 = std::max(worst_bf16, std::abs(y - x) / x);
  }
  TrainConfig stopped = bf16;
  stopped.out = tmp / "bf16-stopped";
  TrainCallbacks cb;
  cb.on_step = [](const StepInfo& s) { return s.step == 6 ? StepAction::Stop : StepAction::Continue; };
  train(stopped, cb);
  stopped.resume = true;
  train(stopped);
  EXPECT_EQ(metrics(bf16.out), metrics(stopped.out));
  EXPECT_TRUE(test::read_file(bf16.out / "final/model.safetensors") ==
              test::read_file(stopped.out / "final/model.safetensors"));
  std::printf("[train cuda bf16] 12 steps: worst relative loss difference from the CPU's fp32 %.2e\n", worst_bf16);

  // f16 (rounding 2⁻¹¹, 8× finer than bf16, so the same bound holds with room) under a dynamic
  // loss scale, which starts at 2¹⁶ and shows in the metrics.
  TrainConfig f16 = bf16;
  f16.out = tmp / "f16";
  f16.dtype = "f16";
  train(f16);
  const auto mf = metrics(f16.out);
  ASSERT_EQ(mf.size(), mc.size());
  for (size_t i = 0; i < mc.size(); ++i) {
    EXPECT_NEAR(double(mf[i]["loss"]), double(mc[i]["loss"]), 3e-2 * double(mc[i]["loss"])) << "f16 at " << i + 1;
    ASSERT_TRUE(mf[i].contains("loss_scale"));
  }
  EXPECT_EQ(double(mf[0]["loss_scale"]), 65536.0);
}

// The data-parallel contract on tmp/cfg.json (12 steps, checkpoints every 4): `procs` (two ranks)
// within 1e-4 of the one-rank run in tmp/one (the weight gradients' sums over a micro-batch's rows
// are split between the ranks, so they round differently, ~1e-7 relative a step, amplified over 12
// Adam steps at lr 1e-2 as in GpuFollowsTheCpuLossCurve); run again, the same bits; resumed from the
// checkpoint of step 4 (as a crash would leave it), the same bits as uninterrupted; as two "nodes"
// on this host meeting over TCP (`node` ranks each, `node_env[k]` for node k), the same bits.
// Returns the worst relative difference from one rank.
double expect_data_parallel(const fs::path& tmp, const std::string& env, const std::string& procs,
                            const std::string& node, const std::array<std::string, 2>& node_env) {
  auto run = [&](const fs::path& out, const std::string& flags, const std::string& extra_env) {
    const test::CliResult r = test::run_cli("train --config " + test::shell_quote((tmp / "cfg.json").string()) +
                                            " --out " + test::shell_quote(out.string()) + " " + flags,
                                            env + " " + extra_env);
    EXPECT_TRUE(r.exited && r.code == 0) << flags << "\n" << r.err;
  };
  auto final_bytes = [](const fs::path& out) { return test::read_file(out / "final" / "model.safetensors"); };
  run(tmp / "two", procs, "");
  const auto m1 = metrics(tmp / "one"), m2 = metrics(tmp / "two");
  EXPECT_EQ(m1.size(), m2.size());
  double worst = 0.0;
  for (size_t i = 0; i < std::min(m1.size(), m2.size()); ++i) {
    EXPECT_EQ(m1[i]["tokens"], m2[i]["tokens"]);
    EXPECT_EQ(m1[i]["lr"], m2[i]["lr"]);
    for (const char* k : {"loss", "grad_norm", "val_loss"}) {
      if (!m1[i].contains(k)) continue;
      EXPECT_TRUE(m2[i].contains(k)) << k << " at step " << i + 1;
      if (!m2[i].contains(k)) continue;
      const double a = m1[i][k], b = m2[i][k];
      EXPECT_NEAR(b, a, 1e-4 * std::abs(a)) << k << " at step " << i + 1;
      worst = std::max(worst, std::abs(b - a) / std::abs(a));
    }
  }
  const Model a = Model::load(tmp / "one" / "final"), b = Model::load(tmp / "two" / "final");
  const std::vector<float> wa = all_weights(a), wb = all_weights(b);
  EXPECT_LE(test::rel_l2(wb.data(), wa.data(), wa.size()), 1e-4);

  run(tmp / "again", procs, "");
  EXPECT_EQ(metrics(tmp / "again"), m2);
  EXPECT_TRUE(final_bytes(tmp / "again") == final_bytes(tmp / "two"));

  fs::copy(tmp / "two", tmp / "resumed", fs::copy_options::recursive);
  for (const char* gone : {"final", "checkpoints/step-8", "checkpoints/step-12"}) fs::remove_all(tmp / "resumed" / gone);
  test::write_file(tmp / "resumed" / "latest", "checkpoints/step-4\n");
  run(tmp / "resumed", "--resume " + procs, "");
  EXPECT_EQ(metrics(tmp / "resumed"), m2);
  EXPECT_TRUE(final_bytes(tmp / "resumed") == final_bytes(tmp / "two"));

  const std::string nodes = node + " --nnodes 2 --master-port " + std::to_string(free_port_pair()) + " --node-rank ";
  std::thread node1([&] { run(tmp / "nodes", nodes + "1", node_env[1]); });
  run(tmp / "nodes", nodes + "0", node_env[0]);
  node1.join();
  EXPECT_EQ(metrics(tmp / "nodes"), m2);
  EXPECT_TRUE(final_bytes(tmp / "nodes") == final_bytes(tmp / "two"));
  return worst;
}

// Data parallel on the CPU (the same launcher, ranks linked through rank 0 over TCP): two
// processes, each micro-batch's 4 rows split 2 + 2, against one process (one thread each).
TEST(TrainRun, TwoCpuProcessesFollowOneRepeatTheirBitsAndResume) {
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 8, 10);
  TrainConfig c = tiny_config(tmp / "one", tmp / "corpus", kTinyEos);
  c.batch_size = 4;
  c.threads = 1;
  test::write_file(tmp / "cfg.json", train_config_to_json(c));
  const test::CliResult one = test::run_cli("train --config " + test::shell_quote((tmp / "cfg.json").string()));
  ASSERT_TRUE(one.exited && one.code == 0) << one.err;
  const double worst = expect_data_parallel(tmp.path(), "", "--nproc-per-node 2", "--nproc-per-node 1", {"", ""});
  std::printf("[train 2 CPU processes] 12 steps: worst relative difference from 1 process %.2e\n", worst);
}

// The data-parallel step on one GPU, a world of 1 (NCCL loaded, the all-reduce started layer by
// layer beside the backward, the loss gathered, the start broadcast): the plain run's rows and
// arithmetic, except that the mean's weight is applied in the all-reduce rather than in the
// update, which changes roundings at 1e-7: 1e-5 relative over 12 steps.
TEST(TrainRun, ADataParallelWorldOfOneFollowsThePlainRun) {
  MAMBA2_REQUIRE_GPU();
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 8, 10);
  TrainConfig plain = tiny_config(tmp / "plain", tmp / "corpus", kTinyEos), dp = plain;
  plain.device = "cuda";
  dp.device = "";
  dp.out = tmp / "dp";
  train(plain);
  const DataParallel one{0, 1, 0, cuda::new_comm_id()};
  train(dp, {}, &one);
  const auto a = metrics(plain.out), b = metrics(dp.out);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* k : {"loss", "grad_norm", "val_loss"})
      if (a[i].contains(k)) {
        EXPECT_NEAR(double(b[i][k]), double(a[i][k]), 1e-5 * std::abs(double(a[i][k]))) << k << " " << i;
      }
}

// Data parallel on 2 GPUs (the CLI's launcher: a process per GPU, NCCL) against one GPU; the nodes
// take a GPU each. A batch that does not split stops every rank at once, and the run with them.
TEST(TrainRun, TwoGpusFollowOneGpuRepeatTheirBitsAndResume) {
  MAMBA2_REQUIRE_GPU();
  if (cuda::device_count() < 2) GTEST_SKIP() << "data-parallel tests need 2 GPUs";
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 8, 10);
  TrainConfig c = tiny_config(tmp / "one", tmp / "corpus", kTinyEos);
  c.device = "cuda";
  c.batch_size = 4;
  train(c);
  test::write_file(tmp / "cfg.json", train_config_to_json(c));
  const double worst = expect_data_parallel(tmp.path(), "MAMBA2_DEVICE=cuda", "--gpus 2", "--gpus 1",
                                            {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"});
  std::printf("[train 2 GPUs] 12 steps: worst relative difference from 1 GPU %.2e\n", worst);
  const test::CliResult bad = test::run_cli("train --config " + test::shell_quote((tmp / "cfg.json").string()) +
                                            " --out " + test::shell_quote((tmp / "bad").string()) +
                                            " --gpus 2 --batch-size 3", "MAMBA2_DEVICE=cuda");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("batch_size (--batch-size) 3 does not split over 2 processes"), std::string::npos) << bad.err;
}


// best/ holds the model of the lowest validation loss: the same weights as the checkpoint of that
// step (evaluations and checkpoints both every 3 steps), with best.json naming the step.
TEST(TrainRun, KeepBestKeepsTheLowestValidationModel) {
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 8, 10);
  TrainConfig c = tiny_config(tmp / "run", tmp / "corpus", kTinyEos);
  c.keep_best = true;
  c.eval_interval = 3;
  c.checkpoint_interval = 3;
  c.lr = 3e-2;
  const TrainResult r = train(c);
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(r.best_dir, c.out / "best");
  double best = 1e300;
  int64_t best_step = 0;
  for (const json& m : metrics(c.out))
    if (m.contains("val_loss") && double(m["val_loss"]) < best) best = m["val_loss"], best_step = m["step"];
  const json info = json::parse(test::read_file(c.out / "best" / "best.json"));
  EXPECT_EQ(int64_t(info["step"]), best_step);
  EXPECT_EQ(double(info["val_loss"]), best);
  EXPECT_TRUE(test::read_file(c.out / "best" / "model.safetensors") ==
              test::read_file(c.out / "checkpoints" / fmt::format("step-{}", best_step) / "model.safetensors"));
  const Model m = Model::load(c.out / "best");
  EXPECT_EQ(m.config().d_model, 32);
  EXPECT_TRUE(fs::exists(c.out / "best" / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(c.out / ".best.tmp") || fs::exists(c.out / ".best.old"));

  TrainConfig no_val = tiny_config(tmp / "run2", tmp / "corpus", kTinyEos);
  no_val.keep_best = true;
  no_val.val_fraction = 0.0;
  try {
    train(no_val);
    FAIL() << "keep_best without validation data was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("keep_best (--keep-best) needs validation data"), std::string::npos)
        << e.what();
  }
}

TEST(TrainRun, ResumeFromTheRunsOwnConfig) {
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 8, 10);
  TrainConfig c = tiny_config(tmp / "run", tmp / "corpus", kTinyEos);
  c.max_steps = 4;
  train(c);
  TrainConfig r = resume_config(c.out);
  EXPECT_TRUE(r.resume);
  EXPECT_EQ(r.seq_len, 32);
  EXPECT_EQ(r.model->d_model, 32);
  r.max_steps = 6;  // a longer run
  const TrainResult res = train(r);
  EXPECT_EQ(res.step, 6);
  EXPECT_EQ(metrics(c.out).size(), 6u);
}

TEST(TrainRun, RefusesToMixRuns) {
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 8, 10);
  TrainConfig c = tiny_config(tmp / "run", tmp / "corpus", kTinyEos);
  c.max_steps = 4;
  c.resume = true;
  EXPECT_NE(test::error_message([&] { train(c); }).find("holds no checkpoint"), std::string::npos);
  c.resume = false;
  // One run per folder at a time.
  TrainCallbacks nested;
  std::string inner;
  nested.on_step = [&](const StepInfo&) {
    inner = test::error_message([&] { train(c); });
    return StepAction::Continue;
  };
  train(c, nested);
  EXPECT_NE(inner.find("another training process is using"), std::string::npos) << inner;
  std::string msg = test::error_message([&] { train(c); });
  EXPECT_NE(msg.find("already holds a run"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--resume"), std::string::npos) << msg;
  c.resume = true;
  c.seq_len = 16;
  msg = test::error_message([&] { train(c); });
  EXPECT_NE(msg.find("'seq_len' is 32 in the run's checkpoint but 16 now"), std::string::npos) << msg;
  c.seq_len = 32;
  test::write_file(tmp / "corpus" / "doc_00.txt", "changed text.");
  msg = test::error_message([&] { train(c); });
  EXPECT_NE(msg.find("data changed"), std::string::npos) << msg;
}

// A save that dies at any stage leaves <out>/latest naming the previous checkpoint, whole; the
// leftovers are cleared and the run resumes from it.
TEST(TrainRun, CrashMidSaveKeepsTheLatestCheckpoint) {
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 8, 10);
  TrainConfig c = tiny_config(tmp / "run", tmp / "corpus", kTinyEos);
  c.max_steps = 4;
  c.checkpoint_interval = 2;
  TrainCallbacks stop;
  stop.on_step = [](const StepInfo& s) { return s.step == 3 ? StepAction::Stop : StepAction::Continue; };
  train(c, stop);
  const fs::path good = training::latest_checkpoint(c.out);
  ASSERT_EQ(good, c.out / "checkpoints" / "step-2");
  const std::string good_weights = test::read_file(good / "model.safetensors");

  const Model m = Model::load(good);
  ModelWeights w = init_weights(m.config(), 1);
  Gradients g = make_gradients(w);
  training::AdamWOptimizer opt(w, g, m.config(), {});
  const training::CheckpointFiles files{&m.config(), &w, &opt, kTinyEos, "{\"garbage\": true}"};
  for (const char* stage : {"model", "tokenizer", "optimizer", "state", "renamed"}) {
    SCOPED_TRACE(stage);
    const std::string msg = test::error_message([&] {
      training::save_checkpoint(c.out, 3, files, 0, [&](const std::string& s) {
        if (s == stage) throw Error("simulated crash");
      });
    });
    EXPECT_EQ(msg, "simulated crash");
    EXPECT_EQ(training::latest_checkpoint(c.out), good);
    EXPECT_EQ(test::read_file(good / "model.safetensors"), good_weights);
    Model::load(good);
  }
  // The run resumes from step 2 (a leftover step-3 folder and .tmp folders notwithstanding).
  EXPECT_TRUE(fs::exists(c.out / "checkpoints" / "step-3"));
  c.resume = true;
  const TrainResult r = train(c);
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(metrics(c.out).size(), 4u);
  for (const auto& e : fs::directory_iterator(c.out / "checkpoints"))
    EXPECT_NE(e.path().filename().string().rfind(".tmp", 0), 0u) << e.path();
}

// evaluate(): the prefill in pieces carrying the state gives lm_loss's numbers on [EOS] + text
// (fp32, different summation order: relative 1e-5); bits per byte is nats / ln 2 / bytes.
TEST(TrainEval, MatchesLmLossAndBitsPerByte) {
  for (const std::string& path : {kTinyEos, kTinyNoEos}) {
    SCOPED_TRACE(path);
    const Tokenizer tok = Tokenizer::load(path);
    ModelConfig mc = preset_config("130m");
    mc.d_model = 32;
    mc.n_layer = 2;
    mc.d_state = 16;
    mc.headdim = 16;
    mc.chunk_size = 16;
    mc.vocab_size = tok.vocab_size();
    auto w = std::make_shared<ModelWeights>(init_weights(mc, 5));
    test::perturb_weights(*w, 6);
    const Model model(mc, w);
    const std::string text = "the cat sat on the mat. A dog ran to the park and back again, café! 12345\n"
                             "the old man looked at the tall tree.";
    std::vector<int32_t> ids;
    if (tok.eos_id()) ids.push_back(*tok.eos_id());
    const auto t = tok.encode(text);
    ids.insert(ids.end(), t.begin(), t.end());
    const std::vector<int64_t> lengths = {int64_t(ids.size())};
    const double ref = lm_loss(mc, *w, ids, lengths);
    for (int64_t piece : {int64_t(0), int64_t(7), int64_t(16), int64_t(1000)}) {
      const EvalResult r = evaluate(model, tok, text, piece);
      EXPECT_EQ(r.tokens, int64_t(t.size()));
      EXPECT_EQ(r.predictions, int64_t(ids.size()) - 1);
      EXPECT_EQ(r.bytes, int64_t(text.size()));
      EXPECT_NEAR(r.loss, ref, 1e-5 * ref) << "piece " << piece;
      EXPECT_NEAR(r.nats, r.loss * double(r.predictions), 1e-9 * r.nats);
      EXPECT_DOUBLE_EQ(r.perplexity, std::exp(r.loss));
      EXPECT_DOUBLE_EQ(r.bits_per_byte, r.nats / std::log(2.0) / double(text.size()));
    }
  }
}

TEST(TrainConfigFile, ParsesKeysAndRefusesUnknownOnes) {
  const TrainConfig c = parse_train_config(
      R"({"out": "o", "model": {"preset": "370m", "d_model": 64, "tie_embeddings": false}, "tokenizer": "t.json",
          "train": "data", "val": ["v1", "v2"], "seq_len": 128, "lr": 1e-3, "min_lr": 0, "seed": 7})",
      "cfg.json");
  EXPECT_EQ(c.model->preset, "370m");
  EXPECT_EQ(c.model->d_model, 64);
  EXPECT_EQ(c.model->tie_embeddings, false);
  EXPECT_EQ(c.train, std::vector<fs::path>{"data"});
  EXPECT_EQ(c.val.size(), 2u);
  EXPECT_EQ(c.seq_len, 128);
  EXPECT_EQ(c.min_lr, 0.0);
  EXPECT_EQ(c.seed, 7u);
  // Round trip.
  const TrainConfig d = parse_train_config(train_config_to_json(c), "again");
  EXPECT_EQ(train_config_to_json(c), train_config_to_json(d));

  auto msg = [](const std::string& text) { return test::error_message([&] { parse_train_config(text, "cfg.json"); }); };
  EXPECT_NE(msg(R"({"lrr": 1})").find("cfg.json: unknown key 'lrr'"), std::string::npos);
  EXPECT_NE(msg(R"({"model": {"dmodel": 1}})").find("cfg.json: model: unknown key 'dmodel'"), std::string::npos);
  EXPECT_NE(msg(R"({"seq_len": 1.5})").find("'seq_len' must be an integer, got 1.5"), std::string::npos);
  EXPECT_NE(msg(R"({"lr": "fast"})").find("'lr' must be a number"), std::string::npos);
  EXPECT_NE(msg(R"({"train": [1]})").find("'train' must be a path or a list of paths"), std::string::npos);
  EXPECT_NE(msg(R"({"seed": -1})").find("'seed' must be a non-negative integer"), std::string::npos);
  EXPECT_NE(msg("{").find("cfg.json: not valid JSON"), std::string::npos);
  EXPECT_NE(test::error_message([] { load_train_config("/nonexistent/cfg.json"); }).find("cannot open /nonexistent/cfg.json"),
            std::string::npos);
}

TEST(TrainConfigFile, ValidationNamesKeyAndFlag) {
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 2, 2);
  const TrainConfig good = tiny_config(tmp / "run", tmp / "corpus", kTinyEos);
  validate_train_config(good);
  auto msg = [&](auto change) {
    TrainConfig c = good;
    change(c);
    return test::error_message([&] { validate_train_config(c); });
  };
  EXPECT_NE(msg([](TrainConfig& c) { c.lr = -1; }).find("lr (--lr) must be positive, got -1"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.seq_len = 1; }).find("seq_len (--seq-len) must be in [2"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.max_steps = 0; }).find("give max_steps (--max-steps) or epochs"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.schedule = "linear"; }).find("schedule (--schedule) must be"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.min_lr = 1.0; }).find("min_lr (--min-lr) must be in [0, lr"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.beta2 = 1.0; }).find("beta2 (--beta2)"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.dtype = "f8"; }).find("dtype (--dtype)"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.device = "gpu"; }).find("device (--device) must be cpu, cuda or cuda:N"),
            std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.device = "cuda:x"; }).find("device (--device) must be"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.val = {c.train[0]}; }).find("not both"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.out.clear(); }).find("out (--out) is required"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.model.reset(); }).find("no model"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.init_from = "/x"; }).find("not both"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.model->preset = "5b"; }).find("unknown preset '5b'"), std::string::npos);
  EXPECT_NE(msg([](TrainConfig& c) { c.tokenizer = "/missing/tok.json"; }).find("tokenizer (--tokenizer): /missing/tok.json does not exist"),
            std::string::npos);
  EXPECT_NE(msg([&](TrainConfig& c) { c.train = {tmp / "nope.txt"}; }).find((tmp / "nope.txt").string() + " does not exist"),
            std::string::npos);
  // Data problems surface when the run starts, naming the file.
  test::write_file(tmp / "corpus" / "bad.txt", "ok \xc3\x28 no");
  const std::string m = test::error_message([&] { train(good); });
  EXPECT_NE(m.find("bad.txt is not valid UTF-8 (byte offset 3"), std::string::npos) << m;
}

TEST(TrainCli, TrainWithConfigAndFlagsThenEval) {
  test::TempDir tmp;
  write_corpus(tmp / "corpus", 6, 8);
  const json cfg = {{"model", {{"d_model", 32}, {"n_layer", 1}, {"d_state", 16}, {"headdim", 16}, {"chunk_size", 16}}},
                    {"tokenizer", kTinyEos},
                    {"train", (tmp / "corpus").string()},
                    {"val_fraction", 0.2},
                    {"seq_len", 32},
                    {"max_steps", 50},
                    {"lr", 1e-2}};
  test::write_file(tmp / "cfg.json", cfg.dump());
  const std::string out = (tmp / "run").string();
  auto r = test::run_cli("train --config " + test::shell_quote((tmp / "cfg.json").string()) + " --out " +
                         test::shell_quote(out) + " --max-steps 3 --log-interval 1 --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("trained to step 3"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("step 3/3 | loss"), std::string::npos) << r.err;  // not a terminal: plain lines
  EXPECT_NE(r.err.find("val_loss"), std::string::npos) << r.err;
  EXPECT_EQ(metrics(out).size(), 3u);

  r = test::run_cli("eval --model " + test::shell_quote(out + "/final") + " --text " +
                    test::shell_quote((tmp / "corpus" / "doc_01.txt").string()) + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json e = json::parse(r.out);
  EXPECT_EQ(e["bytes"], fs::file_size(tmp / "corpus" / "doc_01.txt"));
  EXPECT_EQ(e["predictions"], e["tokens"]);  // the EOS start token predicts the first one
  EXPECT_NEAR(double(e["bits_per_byte"]), double(e["nats"]) / std::log(2.0) / double(e["bytes"]), 1e-12);

  r = test::run_cli("train --config " + test::shell_quote((tmp / "cfg.json").string()) + " --out " +
                    test::shell_quote((tmp / "run2").string()) + " --lr -1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("lr (--lr) must be positive"), std::string::npos) << r.err;
  test::write_file(tmp / "bad.json", R"({"learning_rate": 1})");
  r = test::run_cli("train --config " + test::shell_quote((tmp / "bad.json").string()));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown key 'learning_rate'"), std::string::npos) << r.err;
  r = test::run_cli("train --resume");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--resume without --config needs --out"), std::string::npos) << r.err;
  r = test::run_cli("eval --model " + test::shell_quote(out + "/final") + " --text /nonexistent.txt");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--text: cannot open /nonexistent.txt"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace mamba2
