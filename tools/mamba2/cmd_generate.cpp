// generate: text from one prompt (streamed to stdout) or from a file of prompts run as one batch
// (one JSON line per prompt as each finishes). Speeds and peak memory go to stderr.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "commands.h"
#include "core/json.h"
#include "mamba2/error.h"
#include "mamba2/generate.h"
#include "mamba2/model.h"
#include "mamba2/state.h"
#include "mamba2/tokenizer.h"

namespace mamba2::cli {

namespace {

void write_out(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

// One prompt per line; in a .jsonl file each line is a JSON string or {"prompt": ...}, so that
// prompts can hold newlines. Empty lines are skipped.
std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("[cli] --prompts-file: cannot open {}", path);
  const bool jsonl = std::filesystem::path(path).extension() == ".jsonl";
  std::vector<std::string> prompts;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (!jsonl) {
      prompts.push_back(line);
      continue;
    }
    const nlohmann::json j = parse_json(line, fmt::format("[cli] --prompts-file: {} line {}", path, n));
    if (j.is_string())
      prompts.push_back(j.get<std::string>());
    else if (j.is_object() && j.contains("prompt") && j["prompt"].is_string())
      prompts.push_back(j["prompt"].get<std::string>());
    else
      fail("[cli] --prompts-file: {} line {}: expected a JSON string or an object with a \"prompt\" string", path, n);
  }
  if (prompts.empty()) fail("[cli] --prompts-file: {} has no prompts", path);
  return prompts;
}

}  // namespace

void add_generate(CLI::App& app) {
  auto* sub = app.add_subcommand("generate", "Generate text from a prompt, or from a file of prompts as one batch");
  struct Opts {
    std::string model, tokenizer, prompt, prompts_file, output = "text", load_state, save_state;
    std::vector<std::string> stop;
    GenerationParams params;
    bool greedy = false, no_echo = false;
    int threads = 0;
    std::optional<uint64_t> seed;
    Placement placement;
  };
  auto o = std::make_shared<Opts>();
  SamplingParams& sp = o->params.sampling;
  sub->add_option("--model", o->model, "Model folder or GGUF file")->required();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the model folder's, or a GGUF file's own)");
  auto* prompt = sub->add_option("--prompt,-p", o->prompt, "The prompt");
  auto* file = sub->add_option("--prompts-file", o->prompts_file,
                               "Prompts run as one batch: one per line, or JSON strings / {\"prompt\": ...} in .jsonl");
  prompt->excludes(file);
  sub->add_option("--max-new-tokens,-n", o->params.max_new_tokens, "Tokens to generate at most")->capture_default_str();
  sub->add_option("--temperature", sp.temperature, "0 is greedy")->capture_default_str();
  sub->add_option("--top-k", sp.top_k, "0 turns it off")->capture_default_str();
  sub->add_option("--top-p", sp.top_p, "1 turns it off")->capture_default_str();
  sub->add_option("--min-p", sp.min_p, "0 turns it off")->capture_default_str();
  sub->add_option("--repeat-penalty", sp.repetition_penalty, "1 turns it off")->capture_default_str();
  sub->add_option("--seed", o->seed, "Random seed (default: a random one, printed to stderr)");
  sub->add_flag("--greedy", o->greedy, "Always the most likely token (same as --temperature 0)");
  sub->add_option("--stop", o->stop, "Stop when the text contains this string (repeatable)");
  sub->add_flag("--ignore-eos", o->params.ignore_eos, "Do not stop at the end-of-text token");
  sub->add_option("--output", o->output, "text (streamed) or json (one line per prompt)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  sub->add_flag("--no-echo", o->no_echo, "Text output: do not print the prompt before the generated text");
  sub->add_option("--load-state", o->load_state,
                  "Continue the state in this file (from --save-state): the prompt follows what it has seen");
  sub->add_option("--save-state", o->save_state,
                  "Save the final state (prompt and every generated token consumed) to this file");
  sub->add_option("--threads", o->threads, "Threads (default: all cores)");
  add_placement_options(sub, o->placement);
  on_run(sub, [o] {
    set_threads(o->threads);
    if (o->prompt.empty() == o->prompts_file.empty()) fail("[cli] generate needs --prompt S or --prompts-file F");
    GenerationParams params = o->params;
    params.stop = o->stop;
    if (o->greedy) params.sampling.temperature = 0.0f;
    params.sampling.seed = o->seed ? *o->seed : (uint64_t(std::random_device{}()) << 32) | std::random_device{}();
    const std::vector<std::string> prompts =
        o->prompts_file.empty() ? std::vector<std::string>{o->prompt} : read_prompts(o->prompts_file);
    if ((!o->load_state.empty() || !o->save_state.empty()) && prompts.size() != 1)
      fail("[cli] --load-state and --save-state take one prompt (--prompt), not a batch");
    // Before any work: a bad state file fails fast, and saving never overwrites its own input
    // half-way (the write is atomic anyway).
    if (!o->load_state.empty()) params.start_states.push_back(load_state(o->load_state));
    params.keep_states = !o->save_state.empty();
    const Tokenizer tokenizer = load_tokenizer(o->model, o->tokenizer);
    const Model model = load_model(o->model, o->placement);
    const Generator generator(model, tokenizer);
    if (!o->seed) std::fprintf(stderr, "seed: %llu\n", static_cast<unsigned long long>(params.sampling.seed));

    const bool json = o->output == "json" || !o->prompts_file.empty();
    struct Collected {
      std::string text;
      std::vector<int32_t> tokens;
    };
    std::vector<Collected> collected(json ? prompts.size() : 0);
    bool echo = !json && !o->no_echo;  // after the prompt is known to be good, before its first token
    GenerationStats stats;
    const auto results = generator.generate(
        prompts, params,
        [&](const TokenEvent& e) {
          if (!json) {
            if (echo) write_out(prompts[0]);
            echo = false;
            write_out(e.text);
            return;
          }
          Collected& c = collected[size_t(e.sequence)];
          c.text += e.text;
          if (e.token >= 0) c.tokens.push_back(e.token);
          if (!e.finished) return;
          const nlohmann::json line = {{"index", e.sequence},   {"text", c.text},
                                       {"tokens", c.tokens},    {"finish_reason", to_string(e.reason)}};
          write_out(line.dump() + "\n");
          c = {};
        },
        &stats);
    if (!json) write_out("\n");
    if (!o->save_state.empty()) save_state(o->save_state, results[0].final_state);
    std::fprintf(stderr,
                 "prompt: %lld tokens in %lld sequence(s), %.1f tokens/s | generation: %lld tokens, %.1f tokens/s | "
                 "peak memory %.0f MiB\n",
                 static_cast<long long>(stats.prompt_tokens), static_cast<long long>(results.size()),
                 double(stats.prompt_tokens) / stats.prefill_seconds, static_cast<long long>(stats.generated_tokens),
                 double(stats.generated_tokens) / stats.decode_seconds, peak_rss_mib());
  });
}

}  // namespace mamba2::cli
