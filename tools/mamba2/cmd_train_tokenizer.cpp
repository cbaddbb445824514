// train-tokenizer: a byte-level BPE tokenizer.json trained on text files.
#include <algorithm>
#include <filesystem>

#include "commands.h"
#include "io/atomic_file.h"
#include "mamba2/error.h"
#include "mamba2/tokenizer.h"

namespace mamba2::cli {

namespace fs = std::filesystem;

void add_train_tokenizer(CLI::App& app) {
  auto* sub = app.add_subcommand("train-tokenizer", "Train a byte-level BPE tokenizer.json on text files");
  struct Opts {
    std::vector<std::string> inputs, special;
    std::string out;
    BpeTrainOptions options;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--input", o->inputs, "Text files, or folders of *.txt files (repeatable)")->required();
  sub->add_option("--out", o->out, "tokenizer.json to write")->required();
  sub->add_option("--vocab-size", o->options.vocab_size, "Special tokens + 256 bytes + merges")->capture_default_str();
  sub->add_option("--min-frequency", o->options.min_frequency, "Pairs seen fewer times are not merged")
      ->capture_default_str();
  sub->add_option("--special", o->special, "Special tokens, ids from 0 (default: <|endoftext|>)");
  sub->add_flag("--force", o->force, "Replace an existing --out file");
  on_run(sub, [o] {
    if (!o->special.empty()) o->options.special_tokens = o->special;
    if (!o->force && fs::exists(o->out)) fail("[train-tokenizer] {} exists; pass --force to replace it", o->out);
    std::vector<fs::path> files;
    for (const std::string& in : o->inputs) {
      if (fs::is_directory(in)) {
        std::vector<fs::path> txt;
        for (const auto& e : fs::directory_iterator(in))
          if (e.is_regular_file() && e.path().extension() == ".txt") txt.push_back(e.path());
        if (txt.empty()) fail("[train-tokenizer] --input {}: no .txt files in the folder", in);
        std::sort(txt.begin(), txt.end());
        files.insert(files.end(), txt.begin(), txt.end());
      } else if (fs::is_regular_file(in)) {
        files.emplace_back(in);
      } else {
        fail("[train-tokenizer] --input {}: no such file or folder", in);
      }
    }
    const std::string json = train_bpe(files, o->options);
    AtomicFile f(o->out, "[train-tokenizer]");
    f.write(json.data(), json.size());
    f.commit();
    const Tokenizer t = Tokenizer::load(o->out);
    fmt::print("wrote {} ({} tokens, from {} files)\n", o->out, t.vocab_size(), files.size());
  });
}

}  // namespace mamba2::cli
