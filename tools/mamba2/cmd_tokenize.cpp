// tokenize / detokenize: text to token ids (a JSON array) and back, with a tokenizer.json.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>

#include "commands.h"
#include "mamba2/error.h"
#include "mamba2/tokenizer.h"

namespace mamba2::cli {

void add_tokenize(CLI::App& app) {
  auto* sub = app.add_subcommand("tokenize", "Print the token ids of a text as a JSON array");
  struct Opts {
    std::string tokenizer, text, file;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json (Hugging Face format, byte-level BPE)")->required();
  auto* input = sub->add_option_group("--text or --file", "The text to tokenize (exactly one)");
  input->add_option("--text", o->text, "The text (UTF-8)");
  auto* file = input->add_option("--file", o->file, "Read the text from this file");
  input->require_option(1);
  on_run(sub, [o, file] {
    std::string input = o->text;
    if (file->count() > 0) {
      std::ifstream in(o->file, std::ios::binary);
      if (!in) fail("[cli] --file {}: cannot open the file", o->file);
      input.assign(std::istreambuf_iterator<char>(in), {});
    }
    const Tokenizer tok = Tokenizer::load(o->tokenizer);
    const std::vector<int32_t> ids = tok.encode(input);
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
    out += "]\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
  });
}

void add_detokenize(CLI::App& app) {
  auto* sub = app.add_subcommand("detokenize", "Print the text of token ids (exactly, no newline added)");
  struct Opts {
    std::string tokenizer, ids;
    bool skip_special = false;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json (Hugging Face format, byte-level BPE)")->required();
  sub->add_option("--ids", o->ids, "Token ids, comma-separated (empty: no tokens)")->required();
  sub->add_flag("--skip-special", o->skip_special, "Leave out special tokens such as <|endoftext|>");
  on_run(sub, [o] {
    std::vector<int32_t> ids;
    if (!o->ids.empty()) {
      for (const int64_t v : parse_int_list(o->ids, "--ids")) {
        if (v < 0 || v > std::numeric_limits<int32_t>::max()) fail("[cli] --ids: {} is not a token id", v);
        ids.push_back(int32_t(v));
      }
    }
    const Tokenizer tok = Tokenizer::load(o->tokenizer);
    const std::string text = tok.decode(ids, o->skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
  });
}

}  // namespace mamba2::cli
