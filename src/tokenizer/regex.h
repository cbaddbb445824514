// PCRE2 (UTF + Unicode properties, JIT) for the pre-tokenizer splits, iterated the way
// `tokenizers` iterates its Oniguruma regexes. Matching is thread-safe: the compiled pattern is
// shared read-only, match data and JIT stack are per thread.
#pragma once
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

struct pcre2_real_code_8;

namespace mamba2::tok {

struct Match {
  size_t begin = 0, end = 0;
};

class Regex {
 public:
  // `pattern` is PCRE2 syntax (see onig_to_pcre2); `literal` matches it as plain text. `what`
  // names the pattern in errors.
  Regex(const std::string& pattern, const std::string& what, bool literal = false);
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // The leftmost match starting at or after `start` (lookbehind may see s[0, start)).
  std::optional<Match> find(std::string_view s, size_t start) const;
  // The end of a match that starts exactly at `start`.
  std::optional<size_t> matches_at(std::string_view s, size_t start) const;

  // f(begin, end) for every match, as Oniguruma's find_iter yields them: after an empty match
  // the search moves on by one character, and an empty match right where the previous match
  // ended is skipped.
  template <class F>
  void for_each_match(std::string_view s, F&& f) const {
    size_t from = 0;
    std::optional<size_t> last_end;
    while (from <= s.size()) {
      const std::optional<Match> m = find(s, from);
      if (!m) return;
      if (m->begin == m->end && last_end == m->end) {
        from += from < s.size() ? utf8_step(s, from) : 1;
        continue;
      }
      from = last_end.emplace(m->end);
      f(m->begin, m->end);
    }
  }

  // f(piece) for the matches and the text between them, in order, skipping empty pieces
  // (`tokenizers`' Split with behavior Isolated).
  template <class F>
  void split_isolated(std::string_view s, F&& f) const {
    size_t prev = 0;
    for_each_match(s, [&](size_t begin, size_t end) {
      if (prev < begin) f(s.substr(prev, begin - prev));
      if (begin < end) f(s.substr(begin, end - begin));
      prev = end;
    });
    if (prev < s.size()) f(s.substr(prev));
  }

 private:
  static size_t utf8_step(std::string_view s, size_t i);
  struct CodeDeleter {
    void operator()(pcre2_real_code_8* code) const;
  };
  std::unique_ptr<pcre2_real_code_8, CodeDeleter> code_;
  bool jit_ = false;
  std::string what_;
};

// An Oniguruma (Ruby syntax, as `tokenizers` compiles) pattern in PCRE2 syntax with the same
// meaning: \s becomes Oniguruma's Unicode whitespace set, \uHHHH becomes \x{HHHH}. Constructs
// whose meaning differs between the two engines (\w, \b, \h, anchors, inline flags other than
// i, class intersection, ...) are refused with an error naming `where`.
std::string onig_to_pcre2(std::string_view pattern, const std::string& where);

}  // namespace mamba2::tok
