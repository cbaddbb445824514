// tokenizer_bench: single-thread encode throughput of mamba2::Tokenizer on a text file, the same
// measurement as scripts/bench_tokenizer_hf.py makes of Hugging Face `tokenizers`.
//
//   tokenizer_bench --tokenizer tests/fixtures/tokenizer/gpt-neox-20b.json --text corpus.txt
//                   [--mode whole|lines] [--repeats 3] [--ids-out ids.bin]
//
// whole: the file is one encode() call. lines: one call per line (newline included), as a
// batch of short documents would be. MB = 10^6 bytes of UTF-8 input. Every repeat is timed;
// the first is with an empty word cache (a fresh tokenizer), "best" is the fastest.
// --ids-out writes the ids (int32, little-endian, all calls concatenated) for comparison.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "mamba2/error.h"
#include "mamba2/tokenizer.h"

namespace {

struct Run {
  double seconds = 0;
  std::vector<int32_t> ids;
};

Run encode_all(const mamba2::Tokenizer& tok, const std::vector<std::string_view>& docs) {
  Run r;
  const auto t0 = std::chrono::steady_clock::now();
  for (const std::string_view d : docs) {
    const std::vector<int32_t> ids = tok.encode(d);
    r.ids.insert(r.ids.end(), ids.begin(), ids.end());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::vector<std::string_view> split_docs(const std::string& text, const std::string& mode) {
  if (mode == "whole") return {text};
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    const size_t end = nl == std::string::npos ? text.size() : nl + 1;
    lines.emplace_back(text.data() + pos, end - pos);
    pos = end;
  }
  return lines;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Single-thread encode throughput of the tokenizer"};
  std::string tokenizer_path, text_path, mode = "whole", ids_out;
  int repeats = 3;
  app.add_option("--tokenizer", tokenizer_path, "tokenizer.json")->required();
  app.add_option("--text", text_path, "UTF-8 text file to encode")->required();
  app.add_option("--mode", mode, "whole (one call) or lines (one call per line)")
      ->check(CLI::IsMember({"whole", "lines"}));
  app.add_option("--repeats", repeats, "timed runs")->check(CLI::Range(1, 100));
  app.add_option("--ids-out", ids_out, "write the ids of the first run here (int32 LE)");
  CLI11_PARSE(app, argc, argv);
  try {
    std::ifstream in(text_path, std::ios::binary);
    if (!in) mamba2::fail("[bench] {}: cannot open", text_path);
    const std::string text{std::istreambuf_iterator<char>(in), {}};
    const std::vector<std::string_view> docs = split_docs(text, mode);
    const double mb = double(text.size()) / 1e6;
    std::printf("tokenizer %s\ntext %s: %.3f MB, %zu calls (mode %s)\n", tokenizer_path.c_str(), text_path.c_str(),
                mb, docs.size(), mode.c_str());
    const mamba2::Tokenizer tok = mamba2::Tokenizer::load(tokenizer_path);
    double best = 0;
    std::vector<int32_t> first_ids;
    for (int r = 0; r < repeats; ++r) {
      Run run = encode_all(tok, docs);
      std::printf("run %d: %.3f s  %.2f MB/s  %.0f tokens/s  (%zu tokens)\n", r + 1, run.seconds, mb / run.seconds,
                  double(run.ids.size()) / run.seconds, run.ids.size());
      if (r == 0) first_ids = std::move(run.ids);
      else if (run.ids != first_ids) mamba2::fail("[bench] run {} gave other ids than run 1", r + 1);
      if (r == 0 || run.seconds < best) best = run.seconds;
    }
    std::printf("best: %.2f MB/s  %.0f tokens/s\n", mb / best, double(first_ids.size()) / best);
    if (!ids_out.empty()) {
      std::ofstream out(ids_out, std::ios::binary);
      out.write(reinterpret_cast<const char*>(first_ids.data()), std::streamsize(first_ids.size() * sizeof(int32_t)));
      if (!out) mamba2::fail("[bench] {}: cannot write", ids_out);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
