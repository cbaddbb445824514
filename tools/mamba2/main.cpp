// mamba2: the command-line program. Every mamba2::Error (and any other exception) is caught
// here, printed as one line on stderr, and turned into exit code 1; bad flags exit with 2.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "commands.h"
#include "mamba2/error.h"
#include "mamba2/version.h"

int main(int argc, char** argv) {
  CLI::App app{"mamba2: Mamba2 language models in C++ (CPU and NVIDIA GPUs)"};
  app.require_subcommand(1);
  // Also checks MAMBA2_ISA before anything runs: an instruction set this CPU lacks is an error.
  std::string version;
  try {
    version = mamba2::version_info();
    version.pop_back();  // CLI11 adds the newline
  } catch (const mamba2::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  app.set_version_flag("--version", version);
  mamba2::cli::add_init(app);
  mamba2::cli::add_quantize(app);
  mamba2::cli::add_info(app);
  mamba2::cli::add_logits(app);
  mamba2::cli::add_generate(app);
  mamba2::cli::add_serve(app);
  mamba2::cli::add_train_tokenizer(app);
  mamba2::cli::add_tokenize(app);
  mamba2::cli::add_detokenize(app);
  mamba2::cli::add_grad(app);
  mamba2::cli::add_bench(app);
  mamba2::cli::add_train(app);
  mamba2::cli::add_eval(app);
  // CLI11 reports an unknown command only as "A subcommand is required"; name it instead.
  const auto known = app.get_subcommands([&](CLI::App* sub) { return argc > 1 && sub->check_name(argv[1]); });
  if (argc > 1 && argv[1][0] != '-' && known.empty()) {
    std::fprintf(stderr, "error: [cli] unknown command '%s' (commands: init, info, logits, generate, tokenize, detokenize, train-tokenizer, grad, bench, train, eval; see --help)\n",
                 argv[1]);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    mamba2::cli::run_selected(app);
  } catch (const mamba2::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
