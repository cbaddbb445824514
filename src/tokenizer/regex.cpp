#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>

#include "mamba2/error.h"
#include "tokenizer/unicode.h"

namespace mamba2::tok {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

// Per-thread match state, shared by every pattern: one ovector pair is all find() reads, and a
// JIT stack larger than the 32 KiB default so long whitespace runs cannot exhaust it.
struct MatchScratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  MatchScratch() {
    if (!data || !stack || !context) fail("[tokenizer] out of memory for regex match data");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

// Oniguruma's \s in Unicode mode: TAB..CR, NEL and the separators (Zs, Zl, Zp).
constexpr std::string_view kOnigSpace = R"(\t-\r\x{85}\p{Z})";

}  // namespace

void Regex::CodeDeleter::operator()(pcre2_real_code_8* code) const { pcre2_code_free(code); }

Regex::Regex(const std::string& pattern, const std::string& what, bool literal) : what_(what) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  // NEVER_BACKSLASH_C: \C matches one byte, splitting a UTF-8 character, and later matches run with
  // the UTF check off, which PCRE2 leaves undefined on invalid UTF-8.
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C | (literal ? PCRE2_LITERAL : 0);
  code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error, &offset,
                            nullptr));
  if (!code_) fail("[tokenizer] {}: regex does not compile at offset {}: {}", what, offset, pcre2_message(error));
  jit_ = pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE) == 0;
}

Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;
Regex::~Regex() = default;

size_t Regex::utf8_step(std::string_view s, size_t i) { return utf8_length(static_cast<unsigned char>(s[i])); }

namespace {

// Runs one match; returns false when there is none.
bool run(const pcre2_code* code, bool jit, std::string_view s, size_t start, uint32_t options, const std::string& what,
         Match& m) {
  MatchScratch& sc = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  // The subject is valid UTF-8 (checked on entry to encode), so PCRE2 need not check it again.
  const int rc = jit ? pcre2_jit_match(code, subject, s.size(), start, options, sc.data, sc.context)
                     : pcre2_match(code, subject, s.size(), start, options | PCRE2_NO_UTF_CHECK, sc.data, sc.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail("[tokenizer] {}: regex match failed: {}", what, pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(sc.data);
  m.begin = ovector[0];
  m.end = ovector[1];
  return true;
}

}  // namespace

std::optional<Match> Regex::find(std::string_view s, size_t start) const {
  Match m;
  if (!run(code_.get(), jit_, s, start, 0, what_, m)) return std::nullopt;
  return m;
}

std::optional<size_t> Regex::matches_at(std::string_view s, size_t start) const {
  Match m;
  if (!run(code_.get(), jit_, s, start, PCRE2_ANCHORED, what_, m)) return std::nullopt;
  return m.end;
}

std::string onig_to_pcre2(std::string_view p, const std::string& where) {
  auto refuse = [&](std::string_view construct) {
    fail("[tokenizer] {}: regex construct '{}' is not supported (its meaning differs between Oniguruma and PCRE2)",
         where, construct);
  };
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 == p.size()) fail("[tokenizer] {}: regex ends with a backslash", where);
      const char d = p[++i];
      switch (d) {
        case 's':
          if (in_class) {
            out += kOnigSpace;
          } else {
            out += '[';
            out += kOnigSpace;
            out += ']';
          }
          break;
        case 'S':
          if (in_class) refuse("\\S inside a character class");
          out += "[^";
          out += kOnigSpace;
          out += ']';
          break;
        case 'u': {
          const std::string_view hex = p.substr(i + 1, 4);
          if (hex.size() != 4 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string_view::npos)
            fail("[tokenizer] {}: regex escape \\u needs four hex digits", where);
          out += "\\x{" + std::string(hex) + "}";
          i += 4;
          break;
        }
        case 'p':
        case 'P': {
          const size_t close = p.find('}', i);
          if (i + 1 >= p.size() || p[i + 1] != '{' || close == std::string_view::npos)
            fail("[tokenizer] {}: regex escape \\{} needs a {{...}} property name", where, d);
          out += '\\';
          out += p.substr(i, close + 1 - i);
          i = close;
          break;
        }
        case 'w': case 'W': case 'b': case 'B': case 'h': case 'H': case 'A': case 'z': case 'Z': case 'G':
        case 'R': case 'X': case 'K': case 'N': case 'O': case 'y': case 'Y': case 'k': case 'g':
          refuse(std::string("\\") + d);
          break;
        default:
          out += '\\';
          out += d;
      }
      continue;
    }
    if (in_class) {
      if (c == '[') refuse("nested character class or POSIX bracket");
      if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') refuse("&& (class intersection)");
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') refuse("[] or [^] (a class starting with ']')");
      continue;
    }
    if (c == '^' || c == '$') refuse(std::string(1, c) + " (an anchor)");
    if (c == '(' && i + 1 < p.size() && p[i + 1] == '?') {
      // Inline options: only i (case-insensitive) means the same in both engines.
      size_t j = i + 2;
      while (j < p.size() && (std::isalpha(static_cast<unsigned char>(p[j])) || p[j] == '-')) {
        if (p[j] != 'i' && p[j] != '-') refuse(std::string("(?") + p[j] + " (inline option)");
        ++j;
      }
    }
    out += c;
  }
  if (in_class) fail("[tokenizer] {}: regex has an unterminated character class", where);
  return out;
}

}  // namespace mamba2::tok
