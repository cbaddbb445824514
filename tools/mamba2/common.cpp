#include <omp.h>
#include <sys/resource.h>

#include <charconv>
#include <map>

#include "commands.h"
#include "mamba2/error.h"

namespace mamba2::cli {

namespace {
std::map<CLI::App*, std::function<void()>>& actions() {
  static std::map<CLI::App*, std::function<void()>> a;
  return a;
}
}  // namespace

void on_run(CLI::App* sub, std::function<void()> action) { actions()[sub] = std::move(action); }

void run_selected(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands()) actions().at(sub)();
}

std::vector<int64_t> parse_int_list(const std::string& text, const char* flag) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    int64_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size())
      fail("[cli] {}: '{}' is not an integer (expected a comma-separated list like 5,17,3)", flag, item);
    out.push_back(v);
    pos = end + 1;
  }
  return out;
}

void set_threads(int threads) {
  if (threads < 0) fail("[cli] --threads must be positive, got {}", threads);
  if (threads > 0) omp_set_num_threads(threads);
}

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

}  // namespace mamba2::cli
