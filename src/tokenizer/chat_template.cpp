// Chat templates (see chat_template.h): a lexer, a recursive-descent parser into an AST and an
// evaluator, each following Jinja2 3.1 where a template can tell the difference: whitespace
// control with trim_blocks and lstrip_blocks, operator precedence, scopes, Undefined, and
// Python's semantics and printing of values (str, repr, int, float, list, dict).
// Not implemented (an error, at parse time for syntax): raw, call and filter blocks, include,
// import and extends, recursive loops, printf-style `%` on strings, integers past 64 bits,
// dict keys other than strings, and the rarer filters and tests (kUnsupportedFilters). Filters
// that give generators in Jinja2 (map, select, reverse, ...) give lists; range() gives a list.
#include "tokenizer/chat_template.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <utility>

#include "core/utf8.h"
#include "mamba2/error.h"

namespace mamba2 {
namespace {

// Limits for templates from anywhere: each is far beyond what a real chat template needs.
constexpr int kMaxNesting = 64;        // brackets, blocks, `not`/`-` chains while parsing
constexpr size_t kMaxNameBytes = 256;  // a variable, attribute, filter or test name
constexpr int kMaxExprHeight = 256;    // operator and filter chains (a + b + c ...)
constexpr int kMaxEvalDepth = 512;     // evaluator recursion, macro calls included
constexpr int kMaxValueDepth = 64;     // lists in lists (printing and comparing recurse)
constexpr size_t kMaxStringBytes = 16 << 20;  // the prompt, and any one string
constexpr size_t kMaxItems = 1 << 20;         // any one list (range() included)
// Expressions evaluated, statements run and loop iterations: a base, and more per message.
constexpr int64_t kMaxSteps = 250'000, kMaxStepsPerMessage = 1000;
constexpr size_t kMaxWorkBytes = size_t(256) << 20;  // strings and lists built, output included

// An error while rendering; render() adds the line (or makes raise_exception's message).
struct RenderError {
  std::string what;
  bool raised = false;  // raise_exception() in the template
};

template <class... Args>
[[noreturn]] void oops(fmt::format_string<Args...> format, Args&&... args) {
  throw RenderError{fmt::format(format, std::forward<Args>(args)...)};
}

// ---- text as Python's str sees it: code points ---------------------------------------------

// The code point at s[i], moving i past it (strings are valid UTF-8: inputs are checked).
char32_t next_cp(std::string_view s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  const size_t n = std::min<size_t>(c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4, s.size() - i);
  char32_t cp = n == 1 ? c : c & (0x3F >> (n - 1));
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void put_cp(std::string& out, char32_t cp) {
  utf8proc_uint8_t buf[4];
  out.append(reinterpret_cast<const char*>(buf), size_t(utf8proc_encode_char(utf8proc_int32_t(cp), buf)));
}

size_t cp_count(std::string_view s) {
  return size_t(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

// Where the code point that ends at `end` (> 0) starts.
size_t prev_cp(std::string_view s, size_t end) {
  size_t b = end - 1;
  while (b > 0 && (s[b] & 0xC0) == 0x80) --b;
  return b;
}

// The k-th code point (k < the count).
std::string_view cp_at(std::string_view s, size_t k) {
  size_t i = 0;
  for (; k > 0; --k) next_cp(s, i);
  const size_t from = i;
  next_cp(s, i);
  return s.substr(from, i - from);
}

// str.isspace(), which is also what Jinja2's lexer strips (Python's \s).
bool py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's str.strip/lstrip/rstrip: `chars` null strips whitespace.
std::string_view strip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::u32string set;
  if (chars)
    for (size_t i = 0; i < chars->size();) set += next_cp(*chars, i);
  auto strippable = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : py_space(c); };
  size_t b = 0, e = s.size();
  while (left && b < e) {
    size_t i = b;
    if (!strippable(next_cp(s, i))) break;
    b = i;
  }
  while (right && e > b) {
    size_t i = prev_cp(s, e);
    const size_t start = i;
    if (!strippable(next_cp(s, i))) break;
    e = start;
  }
  return s.substr(b, e - b);
}

// Simple (one-to-one) case mappings; Python's full mappings differ for a few letters (ß → SS).
std::string map_case(std::string_view s, utf8proc_int32_t (*f)(utf8proc_int32_t)) {
  std::string out;
  for (size_t i = 0; i < s.size();) put_cp(out, char32_t(f(utf8proc_int32_t(next_cp(s, i)))));
  return out;
}

// str.capitalize(): the first character in title case, the rest in lower case.
std::string capitalize(std::string_view s) {
  if (s.empty()) return {};
  size_t i = 0;
  std::string out;
  put_cp(out, char32_t(utf8proc_totitle(utf8proc_int32_t(next_cp(s, i)))));
  return out + map_case(s.substr(i), utf8proc_tolower);
}

// The start of a string that may be long, for a message.
std::string excerpt(std::string_view s) {
  if (s.size() <= 80) return std::string(s);
  size_t end = 80;
  while (end > 0 && (s[end] & 0xC0) == 0x80) --end;
  return std::string(s.substr(0, end)) + "...";
}

// ---- values --------------------------------------------------------------------------------

struct Value;
struct Dict;
struct Function;
struct Stmt;
using List = std::vector<Value>;

enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Namespace, Loop, Function };

// A value as the template sees it: Python's types. Strings, lists and dicts are shared and never
// modified (the sandbox forbids it); namespaces are the only mutable objects.
struct Value {
  Kind kind = Kind::Undefined;
  uint8_t depth = 0;    // nesting of lists, dicts and namespaces: printing and comparing recurse
  bool has_ns = false;  // holds a namespace: such values cannot go into a namespace (no cycles)
  int64_t i = 0;        // Bool, Int; Loop: index0
  double f = 0.0;       // Float
  std::shared_ptr<const std::string> s;  // String; Undefined: what was missing, for errors
  std::shared_ptr<const List> list;      // List, Tuple; Loop: the items looped over
  std::shared_ptr<Dict> dict;            // Dict, Namespace
  std::shared_ptr<const Function> fn;    // Function
};

// A dict: insertion order as Python's; keys are strings (all a conversation needs).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  std::map<std::string, size_t, std::less<>> index;

  const Value* find(std::string_view key) const {
    const auto it = index.find(key);
    return it == index.end() ? nullptr : &items[it->second].second;
  }
  void set(const std::string& key, Value v) {
    const auto [it, added] = index.try_emplace(key, items.size());
    if (added) items.emplace_back(key, std::move(v));
    else items[it->second].second = std::move(v);
  }
};

enum class Builtin : uint8_t { Range, Namespace, Dict, RaiseException, Method, Macro };

struct Function {
  Builtin type;
  std::string name;  // for Method: the method
  Value self;        // for Method: the string or dict it belongs to
  const Stmt* macro = nullptr;
  size_t scope = 0;  // for Macro: how many scopes were open where it was defined (it sees those)
};

Value none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value boolean(bool b) {
  Value v;
  v.kind = Kind::Bool;
  v.i = b;
  return v;
}
Value integer(int64_t i) {
  Value v;
  v.kind = Kind::Int;
  v.i = i;
  return v;
}
Value number(double f) {
  Value v;
  v.kind = Kind::Float;
  v.f = f;
  return v;
}
Value text(std::string s) {
  if (s.size() > kMaxStringBytes) oops("a string longer than the limit of {} bytes", kMaxStringBytes);
  Value v;
  v.kind = Kind::String;
  v.s = std::make_shared<const std::string>(std::move(s));
  return v;
}
Value undefined(std::string why) {
  Value v;
  v.s = std::make_shared<const std::string>(std::move(why));
  return v;
}
void add_child_shape(Value& parent, const Value& child) {
  parent.depth = std::max<uint8_t>(parent.depth, uint8_t(child.depth + 1));
  parent.has_ns = parent.has_ns || child.has_ns;
}
void check_depth(const Value& v) {
  if (v.depth > kMaxValueDepth) oops("values nested deeper than the limit of {} levels", kMaxValueDepth);
}
Value sequence(List items, bool tuple = false) {
  if (items.size() > kMaxItems) oops("a list longer than the limit of {} items", kMaxItems);
  Value v;
  v.kind = tuple ? Kind::Tuple : Kind::List;
  v.depth = 1;
  for (const Value& item : items) add_child_shape(v, item);
  check_depth(v);
  v.list = std::make_shared<const List>(std::move(items));
  return v;
}
Value mapping(Dict d) {
  Value v;
  v.kind = Kind::Dict;
  v.depth = 1;
  for (const auto& [key, item] : d.items) add_child_shape(v, item);
  check_depth(v);
  v.dict = std::make_shared<Dict>(std::move(d));
  return v;
}
Value function(Builtin type, std::string name, Value self = {}, const Stmt* macro = nullptr, size_t scope = 0) {
  Value v;
  v.kind = Kind::Function;
  v.depth = self.depth;
  v.has_ns = self.has_ns;
  v.fn = std::make_shared<const Function>(Function{type, std::move(name), std::move(self), macro, scope});
  return v;
}

bool is_number(const Value& v) { return v.kind == Kind::Bool || v.kind == Kind::Int || v.kind == Kind::Float; }
bool is_integral(const Value& v) { return v.kind == Kind::Bool || v.kind == Kind::Int; }
double as_double(const Value& v) { return v.kind == Kind::Float ? v.f : double(v.i); }

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    case Kind::Loop: return "LoopContext";
    case Kind::Function: return "function";
  }
  return "?";
}

// Using an undefined value for anything but printing, testing or iterating is an error.
[[noreturn]] void undefined_error(const Value& v) { oops("{}", v.s ? *v.s : std::string("undefined value")); }

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool:
    case Kind::Int: return v.i != 0;
    case Kind::Float: return v.f != 0.0;
    case Kind::String: return !v.s->empty();
    case Kind::List:
    case Kind::Tuple: return !v.list->empty();
    case Kind::Dict: return !v.dict->items.empty();
    default: return true;
  }
}

// ---- printing: Python's str(), repr() and json.dumps() ------------------------------------

void check_size(const std::string& out) {
  if (out.size() > kMaxStringBytes) oops("a string longer than the limit of {} bytes", kMaxStringBytes);
}

// repr(float): the shortest text that reads back, in fixed notation for exponents -4..15.
std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  const auto end = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific).ptr;
  const std::string_view sci(buf, size_t(end - buf));  // "-1.25e+02"
  const size_t e = sci.find('e');
  std::string out = sci[0] == '-' ? "-" : "", digits;
  for (size_t k = out.size(); k < e; ++k)
    if (sci[k] != '.') digits += sci[k];
  int exp = 0;
  std::from_chars(sci.data() + e + (sci[e + 1] == '+' ? 2 : 1), sci.data() + sci.size(), exp);
  if (exp < -4 || exp >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    return out + fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  if (exp < 0) return out + "0." + std::string(size_t(-exp - 1), '0') + digits;
  if (size_t(exp) + 1 >= digits.size()) return out + digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
  return out + digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
}

// repr(str): quotes and escapes as Python chooses them.
void append_quoted(std::string& out, std::string_view s) {
  const char q = s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos ? '"' : '\'';
  out += q;
  for (size_t i = 0; i < s.size();) {
    const size_t from = i;
    const char32_t c = next_cp(s, i);
    if (c == char32_t(q) || c == '\\') out += {'\\', char(c)};
    else if (c == '\t') out += "\\t";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7F) out += fmt::format("\\x{:02x}", uint32_t(c));
    else if (c < 0x7F) out += char(c);
    else {
      const auto cat = utf8proc_category(utf8proc_int32_t(c));
      const bool printable = cat != UTF8PROC_CATEGORY_CC && cat != UTF8PROC_CATEGORY_CF &&
                             cat != UTF8PROC_CATEGORY_CS && cat != UTF8PROC_CATEGORY_CO &&
                             cat != UTF8PROC_CATEGORY_CN && cat != UTF8PROC_CATEGORY_ZL &&
                             cat != UTF8PROC_CATEGORY_ZP && cat != UTF8PROC_CATEGORY_ZS;
      if (printable) out.append(s.substr(from, i - from));
      else if (c <= 0xFF) out += fmt::format("\\x{:02x}", uint32_t(c));
      else if (c <= 0xFFFF) out += fmt::format("\\u{:04x}", uint32_t(c));
      else out += fmt::format("\\U{:08x}", uint32_t(c));
    }
  }
  out += q;
}

void append_repr(std::string& out, const Value& v) {
  check_size(out);
  switch (v.kind) {
    case Kind::Undefined: out += "Undefined"; return;
    case Kind::None: out += "None"; return;
    case Kind::Bool: out += v.i ? "True" : "False"; return;
    case Kind::Int: out += std::to_string(v.i); return;
    case Kind::Float: out += float_repr(v.f); return;
    case Kind::String: append_quoted(out, *v.s); return;
    case Kind::List:
    case Kind::Tuple: {
      out += v.kind == Kind::List ? '[' : '(';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        append_repr(out, (*v.list)[k]);
      }
      if (v.kind == Kind::Tuple && v.list->size() == 1) out += ',';
      out += v.kind == Kind::List ? ']' : ')';
      return;
    }
    case Kind::Dict:
    case Kind::Namespace: {
      out += v.kind == Kind::Dict ? "{" : "<Namespace {";
      for (size_t k = 0; k < v.dict->items.size(); ++k) {
        if (k) out += ", ";
        append_quoted(out, v.dict->items[k].first);
        out += ": ";
        append_repr(out, v.dict->items[k].second);
      }
      out += v.kind == Kind::Dict ? "}" : "}>";
      return;
    }
    case Kind::Loop: out += fmt::format("<LoopContext {}/{}>", v.i + 1, v.list->size()); return;
    case Kind::Function: out += fmt::format("<function {}>", v.fn->name); return;
  }
}

// str(): strings as they are, undefined as nothing, everything else as repr().
void append_str(std::string& out, const Value& v) {
  if (v.kind == Kind::String) out += *v.s;
  else if (v.kind != Kind::Undefined) append_repr(out, v);
  check_size(out);
}

std::string to_str(const Value& v) {
  if (v.kind == Kind::String) return *v.s;
  std::string out;
  append_str(out, v);
  return out;
}

// transformers' tojson filter: json.dumps(x, ensure_ascii=False, indent=None, separators=None,
// sort_keys=False).
struct JsonStyle {
  bool ascii = false, sort_keys = false;
  std::optional<std::string> indent;
  std::string item_sep = ", ", key_sep = ": ";
};

void append_json_string(std::string& out, std::string_view s, bool ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const size_t from = i;
    const char32_t c = next_cp(s, i);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ascii && c >= 0x7F && c < 0x10000)) out += fmt::format("\\u{:04x}", uint32_t(c));
        else if (ascii && c >= 0x10000)
          out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + ((c - 0x10000) >> 10), 0xDC00 + ((c - 0x10000) & 0x3FF));
        else out.append(s.substr(from, i - from));
    }
  }
  out += '"';
}

void append_json(std::string& out, const Value& v, const JsonStyle& st, int level) {
  check_size(out);
  auto newline = [&](int lvl) {
    if (!st.indent) return;
    out += '\n';
    for (int k = 0; k < lvl; ++k) out += *st.indent;
  };
  switch (v.kind) {
    case Kind::None: out += "null"; return;
    case Kind::Bool: out += v.i ? "true" : "false"; return;
    case Kind::Int: out += std::to_string(v.i); return;
    case Kind::Float:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f < 0 ? "-Infinity" : "Infinity") : float_repr(v.f);
      return;
    case Kind::String: append_json_string(out, *v.s, st.ascii); return;
    case Kind::List:
    case Kind::Tuple:
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += st.item_sep;
        newline(level + 1);
        append_json(out, (*v.list)[k], st, level + 1);
      }
      newline(level);
      out += ']';
      return;
    case Kind::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : v.dict->items) items.push_back(&item);
      if (st.sort_keys) std::sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += st.item_sep;
        newline(level + 1);
        append_json_string(out, items[k]->first, st.ascii);
        out += st.key_sep;
        append_json(out, items[k]->second, st, level + 1);
      }
      newline(level);
      out += '}';
      return;
    }
    default: oops("Object of type {} is not JSON serializable", type_name(v));
  }
}

// A decimal number's double (digits, a point, an exponent), as Python reads it: too large is inf.
double decimal(std::string_view s) {
  double v = 0.0;
  if (std::from_chars(s.data(), s.data() + s.size(), v).ec != std::errc::result_out_of_range) return v;
  const size_t e = s.find_first_of("eE");
  return e != std::string_view::npos && e + 1 < s.size() && s[e + 1] == '-' ? 0.0 : HUGE_VAL;
}

// ---- the syntax tree -----------------------------------------------------------------------

enum class Op : uint8_t { Add, Sub, Mul, Div, FloorDiv, Mod, Pow, Eq, Ne, Lt, Le, Gt, Ge, In, NotIn };

const char* op_text(Op op) {
  static const char* const kText[] = {"+",  "-", "*",  "/", "//", "%",  "**",    "==",
                                      "!=", "<", "<=", ">", ">=", "in", "not in"};
  return kText[int(op)];
}

enum class FilterId : uint8_t {
  Abs, Capitalize, Default, First, Float, Indent, Int, Items, Join, Last, Length, List, Lower, Map, Reject,
  RejectAttr, Replace, Reverse, Safe, Select, SelectAttr, String, Title, ToJson, Trim, Upper, Unsupported
};
constexpr std::pair<std::string_view, FilterId> kFilters[] = {
    {"abs", FilterId::Abs},         {"capitalize", FilterId::Capitalize}, {"count", FilterId::Length},
    {"d", FilterId::Default},       {"default", FilterId::Default},       {"first", FilterId::First},
    {"float", FilterId::Float},     {"indent", FilterId::Indent},         {"int", FilterId::Int},
    {"items", FilterId::Items},     {"join", FilterId::Join},             {"last", FilterId::Last},
    {"length", FilterId::Length},   {"list", FilterId::List},             {"lower", FilterId::Lower},
    {"map", FilterId::Map},         {"reject", FilterId::Reject},         {"rejectattr", FilterId::RejectAttr},
    {"replace", FilterId::Replace}, {"reverse", FilterId::Reverse},       {"safe", FilterId::Safe},
    {"select", FilterId::Select},   {"selectattr", FilterId::SelectAttr}, {"string", FilterId::String},
    {"title", FilterId::Title},     {"tojson", FilterId::ToJson},         {"trim", FilterId::Trim},
    {"upper", FilterId::Upper}};

enum class TestId : uint8_t {
  Defined, Undefined, None, Boolean, True, False, Integer, Float, Number, String, Mapping, Iterable, Sequence,
  Callable, Odd, Even, DivisibleBy, Eq, Ne, Lt, Le, Gt, Ge, In, SameAs, Unsupported
};
constexpr std::pair<std::string_view, TestId> kTests[] = {
    {"defined", TestId::Defined},   {"undefined", TestId::Undefined}, {"none", TestId::None},
    {"boolean", TestId::Boolean},   {"true", TestId::True},           {"false", TestId::False},
    {"integer", TestId::Integer},   {"float", TestId::Float},         {"number", TestId::Number},
    {"string", TestId::String},     {"mapping", TestId::Mapping},     {"iterable", TestId::Iterable},
    {"sequence", TestId::Sequence}, {"callable", TestId::Callable},   {"odd", TestId::Odd},
    {"even", TestId::Even},         {"divisibleby", TestId::DivisibleBy}, {"eq", TestId::Eq},
    {"equalto", TestId::Eq},        {"==", TestId::Eq},               {"ne", TestId::Ne},
    {"!=", TestId::Ne},             {"lt", TestId::Lt},               {"lessthan", TestId::Lt},
    {"<", TestId::Lt},              {"le", TestId::Le},               {"<=", TestId::Le},
    {"gt", TestId::Gt},             {"greaterthan", TestId::Gt},      {">", TestId::Gt},
    {"ge", TestId::Ge},             {">=", TestId::Ge},               {"in", TestId::In},
    {"sameas", TestId::SameAs}};

// Jinja2's other filters and tests: a template may use them where it does not go (for tools, say),
// so they fail only when run.
constexpr std::string_view kUnsupportedFilters[] = {
    "attr", "batch", "center", "dictsort", "e", "escape", "filesizeformat", "forceescape", "format", "groupby", "max",
    "min", "pprint", "random", "round", "slice", "sort", "striptags", "sum", "truncate", "unique", "urlencode",
    "urlize", "wordcount", "wordwrap", "xmlattr"};
constexpr std::string_view kUnsupportedTests[] = {"escaped", "filter", "lower", "test", "upper"};

template <class Id, size_t N>
std::optional<Id> find_id(const std::pair<std::string_view, Id> (&table)[N], std::string_view name) {
  for (const auto& [n, id] : table)
    if (n == name) return id;
  return std::nullopt;
}

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind : uint8_t {
    Literal, Name, List, Tuple, Dict, Attr, Item, Slice, Call, Filter, Test, Not, Neg, Pos, Binary, Concat, Compare,
    And, Or, Cond, Captured
  };
  Kind kind;
  uint8_t code = 0;  // Binary: the Op; Filter: the FilterId; Test: the TestId
  int line = 0, height = 1;
  Value value;       // Literal
  std::string name;  // Name, Attr: the name
  // Operands. List, Tuple: the items; Dict: key, value, key, value...; Attr: object; Item:
  // object, key; Slice: object, start, stop, step (null when left out); Call: callee, arguments;
  // Filter, Test: the value, arguments; Cond: condition, then, else (null when left out);
  // Compare: the operands, ops[k] between args[k] and args[k + 1].
  std::vector<ExprPtr> args;
  std::vector<std::string> keywords;  // Call, Filter, Test: names of the last keywords.size() args
  std::vector<Op> ops;
};

struct Stmt {
  enum class Kind : uint8_t { Text, Print, If, For, Set, SetAttr, SetBlock, Macro, Break, Continue, Scope };
  Kind kind;
  int line = 0;
  std::string text;                // Text: the text; SetAttr, SetBlock: the attribute; Macro: its name
  std::vector<std::string> names;  // Set, SetBlock, For: the targets; SetAttr: the namespace; Macro:
                                   // the parameters; Scope: the `with` variables
  std::vector<ExprPtr> exprs;      // Print, Set, SetAttr: the value; If: each branch's condition;
                                   // For: iterable, filter (or null); SetBlock: its filters (or
                                   // null); Macro: each parameter's default (or null); Scope: values
  std::vector<std::vector<Stmt>> bodies;  // If: per condition, then else; For: body, else; others: body
};

// ---- lexer ---------------------------------------------------------------------------------

enum class Tok : uint8_t { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };

struct Token {
  Tok type;
  size_t pos;        // byte offset in the source
  std::string text;  // Text: the text; Name, Op: the spelling; String: the value
  int64_t i = 0;
  double f = 0.0;
};

// Line and column (in characters), both from 1, of a byte offset.
std::pair<int, int> line_col(std::string_view src, size_t pos) {
  pos = std::min(pos, src.size());
  const size_t line_start = src.rfind('\n', pos == 0 ? 0 : pos - 1);
  const size_t from = line_start == std::string_view::npos || pos == 0 ? 0 : line_start + 1;
  return {int(std::count(src.begin(), src.begin() + std::ptrdiff_t(pos), '\n')) + 1,
          int(cp_count(src.substr(from, pos - from))) + 1};
}

[[noreturn]] void syntax_error(std::string_view src, size_t pos, const std::string& what) {
  const auto [line, col] = line_col(src, pos);
  fail("[chat] template: {} at line {} column {}", what, line, col);
}

// Jinja2's lexer with trim_blocks and lstrip_blocks: text, then tags. Comments vanish.
class Lexer {
 public:
  explicit Lexer(const std::string& src) : s_(src) {}

  std::vector<Token> run() {
    bool line_starting = true;  // the text so far ends a line: lstrip_blocks may strip it whole
    while (pos_ < s_.size()) {
      size_t open = pos_;
      for (;; ++open) {
        open = s_.find('{', open);
        if (open == std::string::npos || (open + 1 < s_.size() && is_tag_char(s_[open + 1]))) break;
      }
      if (open == std::string::npos) {
        add(Tok::Text, pos_, s_.substr(pos_));
        break;
      }
      const char kind = s_[open + 1];
      size_t p = open + 2;
      const char sign = p < s_.size() && (s_[p] == '-' || s_[p] == '+') ? s_[p++] : 0;
      std::string_view before(s_.data() + pos_, open - pos_);
      if (sign == '-') {
        before = strip(before, nullptr, false, true);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: only spaces between the line's start and a block or comment tag go.
        const size_t line = before.rfind('\n') + 1;  // npos + 1 == 0
        if ((line > 0 || line_starting) && line < before.size() && strip(before, nullptr, false, true).size() <= line)
          before = before.substr(0, line);
      }
      if (!before.empty()) add(Tok::Text, pos_, std::string(before));
      pos_ = kind == '#' ? skip_comment(open, p) : lex_tag(kind == '%', open, p);
      line_starting = s_[pos_ - 1] == '\n';
    }
    add(Tok::End, s_.size(), "");
    return std::move(out_);
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;
  std::vector<Token> out_;

  [[noreturn]] void error(size_t pos, const std::string& what) const { syntax_error(s_, pos, what); }
  void add(Tok type, size_t pos, std::string text) { out_.push_back(Token{type, pos, std::move(text)}); }
  bool at(size_t p, std::string_view lit) const { return p <= s_.size() && s_.compare(p, lit.size(), lit) == 0; }
  static bool is_tag_char(char c) { return c == '{' || c == '%' || c == '#'; }

  size_t skip_space(size_t p) const {
    for (size_t i = p; i < s_.size(); p = i)
      if (!py_space(next_cp(s_, i))) break;
    return p;
  }

  size_t skip_comment(size_t open, size_t p) const {
    for (; p < s_.size(); ++p) {
      if (at(p, "+#}")) return p + 3;
      if (at(p, "-#}")) return skip_space(p + 3);
      if (at(p, "#}")) return p + 2 + (at(p + 2, "\n") ? 1 : 0);  // trim_blocks
    }
    error(open, "missing end of comment tag");
  }

  // The tokens of one {{ }} or {% %} tag from p (after its opening); returns the end.
  size_t lex_tag(bool block, size_t open, size_t p) {
    add(block ? Tok::BlockBegin : Tok::VarBegin, open, "");
    std::string brackets;  // the closing brackets expected: the tag ends only outside brackets
    for (;;) {
      if (p >= s_.size()) error(open, block ? "missing end of block tag '%}'" : "missing end of variable tag '}}'");
      if (brackets.empty()) {
        if (block && at(p, "+%}")) return end_tag(Tok::BlockEnd, p, p + 3);
        if (at(p, block ? "-%}" : "-}}")) return end_tag(block ? Tok::BlockEnd : Tok::VarEnd, p, skip_space(p + 3));
        if (block && at(p, "%}")) return end_tag(Tok::BlockEnd, p, p + 2 + (at(p + 2, "\n") ? 1 : 0));
        if (!block && at(p, "}}")) return end_tag(Tok::VarEnd, p, p + 2);
      }
      const char c = s_[p];
      size_t q = p;
      if (py_space(next_cp(s_, q))) {
        p = q;
      } else if (c >= '0' && c <= '9') {
        p = lex_number(p);
      } else if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        q = p;
        while (q < s_.size() && (s_[q] == '_' || std::isalnum(static_cast<unsigned char>(s_[q])))) ++q;
        // Names are looked up at every use: a long one would make each step slow.
        if (q - p > kMaxNameBytes)
          error(p, fmt::format("a name longer than the limit of {} characters", kMaxNameBytes));
        add(Tok::Name, p, s_.substr(p, q - p));
        p = q;
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else {
        p = lex_operator(p, brackets);
      }
    }
  }

  size_t end_tag(Tok type, size_t p, size_t end) {
    add(type, p, "");
    return end;
  }

  // (\d+_)*\d+ from p: the end, or p when there is no digit.
  size_t digits(size_t p, int base = 10) const {
    auto is_digit = [&](size_t k) {
      if (k >= s_.size()) return false;
      const char c = char(std::tolower(static_cast<unsigned char>(s_[k])));
      return base == 16 ? std::isxdigit(static_cast<unsigned char>(c)) != 0 : c >= '0' && c < '0' + base;
    };
    size_t q = p;
    while (is_digit(q)) {
      ++q;
      if (q + 1 < s_.size() && s_[q] == '_' && is_digit(q + 1)) ++q;
    }
    return q;
  }

  size_t lex_number(size_t p) {
    // A float: digits with a fraction, an exponent or both (not right after a dot: `a.0.1`).
    if (p == 0 || s_[p - 1] != '.') {
      const size_t whole = digits(p);
      size_t q = whole;
      if (at(q, ".") && digits(q + 1) > q + 1) q = digits(q + 1);
      if (q < s_.size() && (s_[q] == 'e' || s_[q] == 'E')) {
        size_t e = q + 1;
        if (e < s_.size() && (s_[e] == '+' || s_[e] == '-')) ++e;
        if (digits(e) > e) q = digits(e);
      }
      if (q > whole) {
        std::string spelled = s_.substr(p, q - p);
        std::erase(spelled, '_');
        Token t{Tok::Float, p, s_.substr(p, q - p)};
        t.f = decimal(spelled);
        out_.push_back(std::move(t));
        return q;
      }
    }
    // An integer: 0b, 0o or 0x and digits, or decimal digits (no leading zeros but 0_0).
    int base = 10;
    size_t from = p, q = p;
    const char prefix = p + 1 < s_.size() ? char(std::tolower(static_cast<unsigned char>(s_[p + 1]))) : 0;
    if (s_[p] == '0' && (prefix == 'b' || prefix == 'o' || prefix == 'x')) {
      const int b = prefix == 'b' ? 2 : prefix == 'o' ? 8 : 16;
      const size_t d = p + 2 + (at(p + 2, "_") ? 1 : 0);
      if (digits(d, b) > d) {
        base = b;
        from = d;
        q = digits(d, b);
      }
    }
    if (base == 10 && s_[p] != '0') q = digits(p);
    if (base == 10 && s_[p] == '0')
      for (q = p + 1; at(q, "0") || (at(q, "_") && at(q + 1, "0"));) q += s_[q] == '_' ? 2 : 1;
    int64_t value = 0;
    for (size_t k = from; k < q; ++k) {
      if (s_[k] == '_') continue;
      const int d = std::isdigit(static_cast<unsigned char>(s_[k])) ? s_[k] - '0' : std::tolower(s_[k]) - 'a' + 10;
      if (__builtin_mul_overflow(value, int64_t(base), &value) || __builtin_add_overflow(value, int64_t(d), &value))
        error(p, "integer literal too large");
    }
    Token t{Tok::Int, p, s_.substr(p, q - p)};
    t.i = value;
    out_.push_back(std::move(t));
    return q;
  }

  // A quoted string with Python's escapes (what Jinja2's "unicode-escape" decoding accepts).
  size_t lex_string(size_t p) {
    const char quote = s_[p];
    std::string value;
    size_t q = p + 1;
    auto hex = [&](size_t at, int n) {
      uint32_t v = 0;
      for (int k = 0; k < n; ++k) {
        if (at + size_t(k) >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[at + size_t(k)])))
          error(at - 2, fmt::format("truncated \\{}{} escape", s_[at - 1], std::string(size_t(n), 'X')));
        const char c = char(std::tolower(static_cast<unsigned char>(s_[at + size_t(k)])));
        v = v * 16 + uint32_t(c <= '9' ? c - '0' : c - 'a' + 10);
      }
      if (v > 0x10FFFF || (v >= 0xD800 && v < 0xE000)) error(at - 2, "invalid code point in escape");
      return char32_t(v);
    };
    for (;;) {
      if (q >= s_.size()) error(p, "unterminated string");
      const char c = s_[q];
      if (c == quote) break;
      if (c != '\\') {
        value += c;
        ++q;
        continue;
      }
      if (q + 1 >= s_.size()) error(p, "unterminated string");
      const char e = s_[q + 1];
      q += 2;
      switch (e) {
        case '\n': break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'n': value += '\n'; break;
        case 'r': value += '\r'; break;
        case 't': value += '\t'; break;
        case 'v': value += '\v'; break;
        case 'x': put_cp(value, hex(q, 2)), q += 2; break;
        case 'u': put_cp(value, hex(q, 4)), q += 4; break;
        case 'U': put_cp(value, hex(q, 8)), q += 8; break;
        case 'N': error(q - 2, "\\N{...} escapes are not supported");
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = uint32_t(e - '0');
            for (int k = 0; k < 2 && q < s_.size() && s_[q] >= '0' && s_[q] <= '7'; ++k)
              v = v * 8 + uint32_t(s_[q++] - '0');
            put_cp(value, v);
          } else if (static_cast<unsigned char>(e) >= 0x80) {
            // Jinja2 escapes non-ASCII text as \xNN, \uNNNN or \UNNNNNNNN before decoding, so
            // a backslash before such a character leaves that escape's text.
            size_t k = q - 1;
            const char32_t cp = next_cp(s_, k);
            value += cp <= 0xFF ? fmt::format("\\x{:02x}", uint32_t(cp))
                     : cp <= 0xFFFF ? fmt::format("\\u{:04x}", uint32_t(cp)) : fmt::format("\\U{:08x}", uint32_t(cp));
            q = k;
          } else {
            value += {'\\', e};  // unknown escapes stay as written
          }
      }
    }
    Token t{Tok::String, p, std::move(value)};
    out_.push_back(std::move(t));
    return q + 1;
  }

  size_t lex_operator(size_t p, std::string& brackets) {
    for (std::string_view op : {"//", "**", "==", "!=", ">=", "<="})
      if (at(p, op)) {
        add(Tok::Op, p, std::string(op));
        return p + 2;
      }
    const char c = s_[p];
    if (!std::strchr("+-/*%~[](){}><=.:|,;", c) || c == 0) {
      size_t k = p;
      const char32_t cp = next_cp(s_, k);
      std::string shown;
      put_cp(shown, cp);
      error(p, fmt::format("unexpected character '{}'", shown));
    }
    if (c == '(' || c == '[' || c == '{') brackets += c == '(' ? ')' : c == '[' ? ']' : '}';
    if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty()) error(p, fmt::format("unexpected '{}'", c));
      if (brackets.back() != c) error(p, fmt::format("unexpected '{}', expected '{}'", c, brackets.back()));
      brackets.pop_back();
    }
    add(Tok::Op, p, std::string(1, c));
    return p + 1;
  }
};

// ---- parser --------------------------------------------------------------------------------

// Jinja2's grammar, by recursive descent, one method per rule of jinja2/parser.py.
class Parser {
 public:
  Parser(const std::string& src, std::vector<Token> tokens) : src_(src), toks_(std::move(tokens)) {
    for (size_t k = 0; k < src.size(); ++k)
      if (src[k] == '\n') line_starts_.push_back(k + 1);
  }

  std::vector<Stmt> parse_template() {
    std::vector<Stmt> body = parse_body({});
    if (!unknown_.empty()) error(toks_[unknown_[0].first], unknown_[0].second);
    return body;
  }

 private:
  const std::string& src_;
  std::vector<Token> toks_;
  std::vector<size_t> line_starts_{0};
  size_t k_ = 0;
  int depth_ = 0;       // recursion, against kMaxNesting
  int loop_depth_ = 0;  // for loops around (break and continue need one)
  // Jinja2 refuses a filter or test it does not know while compiling, except within an if
  // statement or an inline if (a "soft" scope), where it fails only when run.
  bool soft_ = false;
  std::vector<std::pair<size_t, std::string>> unknown_;  // token, error: refused unless made soft

  struct Soft {
    Parser& p;
    bool outer;
    Soft(Parser& parser, bool soft) : p(parser), outer(std::exchange(parser.soft_, soft)) {}
    ~Soft() { p.soft_ = outer; }
  };

  // A filter or test this interpreter does not have: fails when run if Jinja2 has it or the
  // scope is soft, else while parsing.
  template <size_t N>
  void check_unknown(const Token& name, const char* what, const std::string_view (&jinja2_has)[N]) {
    if (!soft_ && std::find(std::begin(jinja2_has), std::end(jinja2_has), name.text) == std::end(jinja2_has))
      unknown_.emplace_back(size_t(&name - toks_.data()), fmt::format("unknown {} '{}'", what, name.text));
  }

  const Token& cur() const { return toks_[k_]; }
  const Token& next_token() const { return toks_[std::min(k_ + 1, toks_.size() - 1)]; }
  void advance() {
    if (k_ + 1 < toks_.size()) ++k_;
  }
  int line_of(const Token& t) const {
    return int(std::upper_bound(line_starts_.begin(), line_starts_.end(), t.pos) - line_starts_.begin());
  }

  [[noreturn]] void error(const Token& t, const std::string& what) const { syntax_error(src_, t.pos, what); }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::End: return "end of template";
      case Tok::VarEnd: return "end of print statement";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::Text: return "template text";
      case Tok::VarBegin: return "'{{'";
      case Tok::BlockBegin: return "'{%'";
      case Tok::String: return "string";
      default: return "'" + t.text + "'";
    }
  }
  [[noreturn]] void unexpected() const { error(cur(), "unexpected " + describe(cur())); }

  bool is_op(std::string_view op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(std::string_view name) const { return cur().type == Tok::Name && cur().text == name; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    advance();
    return true;
  }
  bool skip_name(std::string_view name) {
    if (!is_name(name)) return false;
    advance();
    return true;
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) error(cur(), fmt::format("expected '{}', got {}", op, describe(cur())));
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) error(cur(), fmt::format("expected {}, got {}", what, describe(cur())));
    advance();
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) error(cur(), "expected a name, got " + describe(cur()));
    std::string name = cur().text;
    advance();
    return name;
  }
  void block_end() { expect(Tok::BlockEnd, "end of statement block"); }
  // A statement's body starts: `%}` (Jinja2 also allows a colon before it).
  void begin_body() {
    skip_op(":");
    block_end();
  }

  struct Nest {
    Parser& p;
    Nest(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxNesting)
        p.error(p.cur(), fmt::format("nested deeper than the limit of {} levels", kMaxNesting));
    }
    ~Nest() { --p.depth_; }
  };

  ExprPtr node(Expr::Kind kind, const Token& at, std::vector<ExprPtr> args = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line_of(at);
    for (const ExprPtr& a : args)
      if (a) e->height = std::max(e->height, a->height + 1);
    if (e->height > kMaxExprHeight)
      error(at, fmt::format("expression nested deeper than the limit of {} levels", kMaxExprHeight));
    e->args = std::move(args);
    return e;
  }
  template <class... Ptrs>
  static std::vector<ExprPtr> list(Ptrs... ptrs) {
    std::vector<ExprPtr> v;
    (v.push_back(std::move(ptrs)), ...);
    return v;
  }

  // ---- statements ----

  // Statements up to a tag named in `ends` (left as the current token) or the end.
  std::vector<Stmt> parse_body(std::initializer_list<std::string_view> ends) {
    std::vector<Stmt> body;
    for (;;) {
      const Token& t = cur();
      if (t.type == Tok::End) {
        if (ends.size() == 0) return body;
        std::string names;
        for (std::string_view e : ends) names += (names.empty() ? "'" : " or '") + std::string(e) + "'";
        error(t, "unexpected end of template, expected " + names);
      }
      Stmt s;
      s.line = line_of(t);
      if (t.type == Tok::Text) {
        s.kind = Stmt::Kind::Text;
        s.text = t.text;
        advance();
      } else if (t.type == Tok::VarBegin) {
        advance();
        s.kind = Stmt::Kind::Print;
        s.exprs.push_back(parse_tuple(true));
        expect(Tok::VarEnd, "end of print statement");
      } else if (t.type == Tok::BlockBegin) {
        advance();
        if (cur().type == Tok::Name && std::find(ends.begin(), ends.end(), cur().text) != ends.end()) return body;
        s = parse_statement();
      } else {
        unexpected();
      }
      body.push_back(std::move(s));
    }
  }

  // The body of a block statement, through its end tag.
  std::vector<Stmt> parse_block(std::string_view end, bool soft = false) {
    Soft scope(*this, soft);
    begin_body();
    std::vector<Stmt> body = parse_body({end});
    advance();
    block_end();
    return body;
  }

  Stmt parse_statement() {
    Nest nest(*this);
    const Token& t = cur();
    if (t.type != Tok::Name) error(t, "expected a tag name, got " + describe(t));
    const std::string tag = t.text;
    Stmt s;
    s.line = line_of(t);
    advance();
    if (tag == "if") return parse_if(std::move(s));
    if (tag == "for") return parse_for(std::move(s));
    if (tag == "set") return parse_set(std::move(s));
    if (tag == "macro") return parse_macro(std::move(s));
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) error(t, fmt::format("'{}' outside a loop", tag));
      s.kind = tag == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue;
      block_end();
      return s;
    }
    if (tag == "generation" || tag == "with") {
      // {% generation %} (transformers' assistant-mask marker) and {% with %} only open a scope.
      s.kind = Stmt::Kind::Scope;
      while (tag == "with" && cur().type != Tok::BlockEnd) {
        if (!s.names.empty()) expect_op(",");
        s.names.push_back(target_name());
        expect_op("=");
        s.exprs.push_back(parse_expression());
      }
      s.bodies.push_back(parse_block(tag == "with" ? "endwith" : "endgeneration"));
      return s;
    }
    error(t, fmt::format("unknown or unsupported tag '{}'", tag));
  }

  Stmt parse_if(Stmt s) {
    Soft soft(*this, true);
    s.kind = Stmt::Kind::If;
    for (;;) {
      s.exprs.push_back(parse_tuple(false));
      begin_body();
      s.bodies.push_back(parse_body({"elif", "else", "endif"}));
      const std::string tag = cur().text;
      advance();
      if (tag == "elif") continue;
      if (tag == "else") s.bodies.push_back(parse_block("endif", true));
      else block_end();
      return s;
    }
  }

  // `loop` can be assigned only outside loops, as in Jinja2.
  std::string target_name(bool loop_target = false) {
    const Token& t = cur();
    std::string name = expect_name();
    if (name == "true" || name == "false" || name == "none" || name == "True" || name == "False" || name == "None")
      error(t, fmt::format("cannot assign to '{}'", name));
    if (name == "loop" && (loop_target || loop_depth_ > 0)) error(t, "cannot assign to the special loop variable");
    return name;
  }
  // `a` or `a, b` (optionally in parentheses), as for and set take them.
  std::vector<std::string> target_names(bool loop_target = false) {
    const bool parens = skip_op("(");
    std::vector<std::string> names{target_name(loop_target)};
    while (skip_op(",") && cur().type == Tok::Name && !is_name("in")) names.push_back(target_name(loop_target));
    if (parens) expect_op(")");
    return names;
  }

  Stmt parse_for(Stmt s) {
    s.kind = Stmt::Kind::For;
    s.names = target_names(true);
    if (!skip_name("in")) error(cur(), "expected 'in', got " + describe(cur()));
    s.exprs.push_back(parse_tuple(false, false, "recursive"));
    Soft hard(*this, false);
    s.exprs.push_back(skip_name("if") ? parse_expression() : nullptr);
    if (is_name("recursive")) error(cur(), "recursive loops are not supported");
    begin_body();
    ++loop_depth_;
    s.bodies.push_back(parse_body({"endfor", "else"}));
    --loop_depth_;
    const std::string tag = cur().text;
    advance();
    if (tag == "else") {
      s.bodies.push_back(parse_block("endfor"));
    } else {
      s.bodies.emplace_back();
      block_end();
    }
    return s;
  }

  Stmt parse_set(Stmt s) {
    s.names = target_names();
    if (s.names.size() == 1 && skip_op(".")) s.text = expect_name();
    if (skip_op("=")) {
      s.kind = s.text.empty() ? Stmt::Kind::Set : Stmt::Kind::SetAttr;
      s.exprs.push_back(parse_tuple(true));
      block_end();
      return s;
    }
    if (s.names.size() != 1) error(cur(), "expected '='");
    s.kind = Stmt::Kind::SetBlock;
    ExprPtr filters;
    if (is_op("|")) filters = parse_filters(node(Expr::Kind::Captured, cur()));
    s.exprs.push_back(std::move(filters));
    s.bodies.push_back(parse_block("endset"));
    return s;
  }

  Stmt parse_macro(Stmt s) {
    s.kind = Stmt::Kind::Macro;
    s.text = target_name();
    expect_op("(");
    while (!skip_op(")")) {
      if (!s.names.empty()) expect_op(",");
      if (skip_op(")")) break;
      s.names.push_back(target_name());
      if (skip_op("=")) s.exprs.push_back(parse_expression());
      else if (!s.exprs.empty() && s.exprs.back()) error(cur(), "non-default argument follows default argument");
      else s.exprs.push_back(nullptr);
    }
    const int loops = std::exchange(loop_depth_, 0);
    s.bodies.push_back(parse_block("endmacro"));
    loop_depth_ = loops;
    return s;
  }

  // ---- expressions ----

  // Expressions separated by commas: a tuple when there is a comma.
  ExprPtr parse_tuple(bool condexpr, bool parenthesized = false, std::string_view end_name = {}) {
    const Token& at = cur();
    std::vector<ExprPtr> items;
    bool tuple = false;
    for (;;) {
      if (!items.empty()) expect_op(",");
      if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || is_op(")") ||
          (!end_name.empty() && is_name(end_name)))
        break;
      items.push_back(parse_expression(condexpr));
      if (!is_op(",")) break;
      tuple = true;
    }
    if (!tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!parenthesized) error(cur(), "expected an expression, got " + describe(cur()));
    }
    return node(Expr::Kind::Tuple, at, std::move(items));
  }

  ExprPtr parse_expression(bool condexpr = true) {
    Nest nest(*this);
    return condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    const Token& at = cur();
    const size_t unknown = unknown_.size();
    ExprPtr e = parse_or();
    if (!is_name("if")) return e;
    unknown_.resize(unknown);
    Soft soft(*this, true);
    while (skip_name("if")) {
      ExprPtr cond = parse_or();
      ExprPtr otherwise;
      if (skip_name("else")) {
        Nest nest(*this);
        otherwise = parse_condexpr();
      }
      e = node(Expr::Kind::Cond, at, list(std::move(cond), std::move(e), std::move(otherwise)));
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const Token& at = cur();
      advance();
      e = node(Expr::Kind::Or, at, list(std::move(e), parse_and()));
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const Token& at = cur();
      advance();
      e = node(Expr::Kind::And, at, list(std::move(e), parse_not()));
    }
    return e;
  }

  ExprPtr parse_not() {
    if (!is_name("not")) return parse_compare();
    const Token& at = cur();
    advance();
    Nest nest(*this);
    return node(Expr::Kind::Not, at, list(parse_not()));
  }

  ExprPtr parse_compare() {
    const Token& at = cur();
    std::vector<ExprPtr> operands;
    operands.push_back(parse_math1());
    std::vector<Op> ops;
    for (;;) {
      static const std::pair<std::string_view, Op> kCompare[] = {{"==", Op::Eq}, {"!=", Op::Ne}, {"<", Op::Lt},
                                                                 {"<=", Op::Le}, {">", Op::Gt},  {">=", Op::Ge}};
      std::optional<Op> op;
      for (const auto& [text, o] : kCompare)
        if (is_op(text)) op = o;
      if (op) {
        advance();
      } else if (is_name("in")) {
        advance();
        op = Op::In;
      } else if (is_name("not") && next_token().type == Tok::Name && next_token().text == "in") {
        advance();
        advance();
        op = Op::NotIn;
      } else {
        break;
      }
      ops.push_back(*op);
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return std::move(operands[0]);
    ExprPtr e = node(Expr::Kind::Compare, at, std::move(operands));
    e->ops = std::move(ops);
    return e;
  }

  ExprPtr binary(Op op, const Token& at, ExprPtr a, ExprPtr b) {
    ExprPtr e = node(Expr::Kind::Binary, at, list(std::move(a), std::move(b)));
    e->code = uint8_t(op);
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& at = cur();
      advance();
      e = binary(at.text == "+" ? Op::Add : Op::Sub, at, std::move(e), parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    const Token& at = cur();
    std::vector<ExprPtr> parts;
    parts.push_back(parse_math2());
    while (skip_op("~")) parts.push_back(parse_math2());
    if (parts.size() == 1) return std::move(parts[0]);
    return node(Expr::Kind::Concat, at, std::move(parts));
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& at = cur();
      advance();
      const Op op = at.text == "*" ? Op::Mul : at.text == "/" ? Op::Div : at.text == "//" ? Op::FloorDiv : Op::Mod;
      e = binary(op, at, std::move(e), parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary();
    while (is_op("**")) {
      const Token& at = cur();
      advance();
      e = binary(Op::Pow, at, std::move(e), parse_unary());
    }
    return e;
  }

  // -x and +x bind tighter than filters: -x|abs is abs(-x).
  ExprPtr parse_unary(bool with_filters = true) {
    const Token& at = cur();
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      advance();
      Nest nest(*this);
      e = node(at.text == "-" ? Expr::Kind::Neg : Expr::Kind::Pos, at, list(parse_unary(false)));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    return with_filters ? parse_filters(std::move(e)) : std::move(e);
  }

  ExprPtr literal(const Token& at, Value v) {
    ExprPtr e = node(Expr::Kind::Literal, at);
    e->value = std::move(v);
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    if (t.type == Tok::Name) {
      advance();
      if (t.text == "true" || t.text == "True") return literal(t, boolean(true));
      if (t.text == "false" || t.text == "False") return literal(t, boolean(false));
      if (t.text == "none" || t.text == "None") return literal(t, none());
      ExprPtr e = node(Expr::Kind::Name, t);
      e->name = t.text;
      return e;
    }
    if (t.type == Tok::String) {
      std::string s;
      for (; cur().type == Tok::String; advance()) s += cur().text;  // "a" "b" is "ab"
      return literal(t, text(std::move(s)));
    }
    if (t.type == Tok::Int) {
      advance();
      return literal(t, integer(t.i));
    }
    if (t.type == Tok::Float) {
      advance();
      return literal(t, number(t.f));
    }
    if (skip_op("(")) {
      ExprPtr e = parse_tuple(true, true);
      expect_op(")");
      return e;
    }
    if (is_op("[") || is_op("{")) {
      const bool dict = is_op("{");
      const char* close = dict ? "}" : "]";
      advance();
      std::vector<ExprPtr> items;
      while (!skip_op(close)) {
        if (!items.empty()) expect_op(",");
        if (skip_op(close)) break;
        items.push_back(parse_expression());
        if (dict) {
          expect_op(":");
          items.push_back(parse_expression());
        }
      }
      return node(dict ? Expr::Kind::Dict : Expr::Kind::List, t, std::move(items));
    }
    unexpected();
  }

  ExprPtr parse_postfix(ExprPtr e) {
    for (;;) {
      const Token& at = cur();
      if (skip_op(".")) {
        if (cur().type == Tok::Int) {
          ExprPtr key = literal(cur(), integer(cur().i));
          advance();
          e = node(Expr::Kind::Item, at, list(std::move(e), std::move(key)));
        } else if (cur().type == Tok::Name) {
          std::string name = cur().text;
          advance();
          e = node(Expr::Kind::Attr, at, list(std::move(e)));
          e->name = std::move(name);
        } else {
          error(cur(), "expected a name or number after '.'");
        }
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), at);
      } else if (is_op("(")) {
        e = parse_call(node(Expr::Kind::Call, at, list(std::move(e))));
      } else {
        return e;
      }
    }
  }

  // After `[`: an index, a slice a:b:c, or several (a tuple key).
  ExprPtr parse_subscript(ExprPtr e, const Token& at) {
    std::vector<ExprPtr> keys;
    ExprPtr slice;
    while (!skip_op("]")) {
      if (!keys.empty() || slice) expect_op(",");
      ExprPtr first = is_op(":") ? nullptr : parse_expression();
      if (!is_op(":")) {
        keys.push_back(std::move(first));
        continue;
      }
      std::vector<ExprPtr> parts = list(std::move(e), std::move(first));
      for (int k = 0; k < 2; ++k) {
        if (!skip_op(":")) {
          parts.push_back(nullptr);
          continue;
        }
        parts.push_back(is_op(":") || is_op("]") || is_op(",") ? nullptr : parse_expression());
      }
      if (!keys.empty() || !is_op("]")) error(cur(), "slices with several keys are not supported");
      slice = node(Expr::Kind::Slice, at, std::move(parts));
    }
    if (slice) return slice;
    if (keys.empty()) error(at, "expected a subscript");
    ExprPtr key = keys.size() == 1 ? std::move(keys[0]) : node(Expr::Kind::Tuple, at, std::move(keys));
    return node(Expr::Kind::Item, at, list(std::move(e), std::move(key)));
  }

  // (args, name=value, ...) onto e (Call, Filter or Test), whose args[0] is already there.
  ExprPtr parse_call(ExprPtr e) {
    const Token& open = cur();
    expect_op("(");
    while (!skip_op(")")) {
      if (e->args.size() > 1) {
        expect_op(",");
        if (skip_op(")")) break;
      }
      if (is_op("*") || is_op("**")) error(cur(), "*args and **kwargs are not supported");
      if (cur().type == Tok::Name && next_token().type == Tok::Op && next_token().text == "=") {
        e->keywords.push_back(cur().text);
        advance();
        advance();
      } else if (!e->keywords.empty()) {
        error(open, "invalid syntax for function call expression");
      }
      ExprPtr arg = parse_expression();
      e->height = std::max(e->height, arg->height + 1);
      e->args.push_back(std::move(arg));
    }
    return e;
  }

  ExprPtr parse_filters(ExprPtr e) {
    for (;;) {
      const Token& at = cur();
      if (skip_op("|")) {
        const Token& name = cur();
        const std::string filter = expect_name();
        const auto id = find_id(kFilters, filter);
        if (!id) check_unknown(name, "filter", kUnsupportedFilters);
        e = node(Expr::Kind::Filter, at, list(std::move(e)));
        e->code = uint8_t(id.value_or(FilterId::Unsupported));
        e->name = filter;
        if (is_op("(")) e = parse_call(std::move(e));
      } else if (skip_name("is")) {
        const bool negated = skip_name("not");
        const Token& name = cur();
        const std::string test = expect_name();
        const auto id = find_id(kTests, test);
        if (!id) check_unknown(name, "test", kUnsupportedTests);
        e = node(Expr::Kind::Test, at, list(std::move(e)));
        e->code = uint8_t(id.value_or(TestId::Unsupported));
        e->name = test;
        if (is_op("(")) {
          e = parse_call(std::move(e));
        } else if ((cur().type == Tok::Name && !is_name("else") && !is_name("or") && !is_name("and")) ||
                   cur().type == Tok::String || cur().type == Tok::Int || cur().type == Tok::Float || is_op("[") ||
                   is_op("{")) {
          // `x is divisibleby 3`: one argument without parentheses.
          if (is_name("is")) error(cur(), "tests cannot be chained with 'is'");
          ExprPtr arg = parse_postfix(parse_primary());
          e->height = std::max(e->height, arg->height + 1);
          e->args.push_back(std::move(arg));
        }
        if (negated) e = node(Expr::Kind::Not, at, list(std::move(e)));
      } else if (is_op("(")) {
        e = parse_call(node(Expr::Kind::Call, at, list(std::move(e))));
      } else {
        return e;
      }
      if (e->height > kMaxExprHeight)
        error(at, fmt::format("expression nested deeper than the limit of {} levels", kMaxExprHeight));
    }
  }
};

// ---- evaluator -----------------------------------------------------------------------------

// Arguments of a call, filter or test.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string_view, Value>> kw;

  // The value of each of `params` (at most 4; null where not given), bound as Python binds a call.
  std::array<const Value*, 4> bind(std::string_view what, std::initializer_list<std::string_view> params) const {
    if (pos.size() > params.size()) oops("{}() takes at most {} arguments ({} given)", what, params.size(), pos.size());
    std::array<const Value*, 4> out{};
    for (size_t k = 0; k < pos.size(); ++k) out[k] = &pos[k];
    for (const auto& [name, v] : kw) {
      const auto it = std::find(params.begin(), params.end(), name);
      if (it == params.end()) oops("{}() got an unexpected keyword argument '{}'", what, name);
      const auto k = size_t(it - params.begin());
      if (out[k]) oops("{}() got multiple values for argument '{}'", what, name);
      out[k] = &v;
    }
    return out;
  }
};

const Value* given(const Value* v) { return v && v->kind != Kind::None ? v : nullptr; }

int64_t int_arg(const Value* v, std::string_view what, int64_t fallback) {
  if (!given(v)) return fallback;
  if (!is_integral(*v)) oops("{} must be an integer, not '{}'", what, type_name(*v));
  return v->i;
}

const std::string* str_arg(const Value* v, std::string_view what) {
  if (!given(v)) return nullptr;
  if (v->kind != Kind::String) oops("{} must be a string, not '{}'", what, type_name(*v));
  return v->s.get();
}

const std::string& required_str(const Value* v, std::string_view what) {
  if (!v) oops("{} is missing", what);
  const std::string* s = str_arg(v, what);
  if (!s) oops("{} must be a string, not 'NoneType'", what);
  return *s;
}

// Substring search that stays linear in the worst case (texts may be megabytes).
size_t find_sub(std::string_view hay, std::string_view needle, size_t from = 0) {
  if (needle.size() <= 4) return hay.find(needle, from);
  if (from > hay.size()) return std::string_view::npos;
  const auto it = std::search(hay.begin() + std::ptrdiff_t(from), hay.end(),
                              std::boyer_moore_searcher(needle.begin(), needle.end()));
  return it == hay.end() ? std::string_view::npos : size_t(it - hay.begin());
}

// str.splitlines(): the line breaks Python knows, not kept.
std::vector<std::string> split_lines(std::string_view s) {
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t at = i;
    const char32_t c = next_cp(s, i);
    if (c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) || c == 0x85 || c == 0x2028 ||
        c == 0x2029) {
      lines.emplace_back(s.substr(start, at - start));
      if (c == '\r' && i < s.size() && s[i] == '\n') ++i;
      start = i;
    }
  }
  if (start < s.size()) lines.emplace_back(s.substr(start));
  return lines;
}

// Python's int(str, base) and float(str), as the int and float filters try them.
std::optional<int64_t> parse_int(std::string_view s, int64_t base) {
  const std::string t(strip(s, nullptr, true, true));
  if (t.empty()) return std::nullopt;
  size_t p = t[0] == '+' || t[0] == '-' ? 1 : 0;
  if (base == 16 || base == 8 || base == 2) {
    const char prefix = base == 16 ? 'x' : base == 8 ? 'o' : 'b';
    if (p + 1 < t.size() && t[p] == '0' && std::tolower(static_cast<unsigned char>(t[p + 1])) == prefix) p += 2;
  } else if (base != 10) {
    oops("int() base {} is not supported", base);
  }
  int64_t v = 0;
  bool any = false;
  for (; p < t.size(); ++p) {
    if (t[p] == '_' && any && p + 1 < t.size() && t[p + 1] != '_') continue;
    const int c = std::tolower(static_cast<unsigned char>(t[p]));
    const int d = std::isdigit(c) ? c - '0' : std::isalpha(c) ? c - 'a' + 10 : 99;
    if (d >= base) return std::nullopt;
    if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v)) oops("integer overflow");
    any = true;
  }
  if (!any) return std::nullopt;
  return t[0] == '-' ? -v : v;
}

std::optional<double> parse_float(std::string_view s) {
  std::string t(strip(s, nullptr, true, true));
  const bool negative = !t.empty() && t[0] == '-';
  if (!t.empty() && (t[0] == '+' || t[0] == '-')) t.erase(0, 1);
  for (size_t k = 0; k < t.size(); ++k)  // an underscore only between digits
    if (t[k] == '_' && !(k > 0 && k + 1 < t.size() && std::isdigit(static_cast<unsigned char>(t[k - 1])) &&
                         std::isdigit(static_cast<unsigned char>(t[k + 1]))))
      return std::nullopt;
  std::erase(t, '_');
  if (t.empty() || t[0] == '+' || t[0] == '-') return std::nullopt;
  double v = 0.0;
  const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (end != t.data() + t.size() || (ec != std::errc() && ec != std::errc::result_out_of_range)) return std::nullopt;
  if (ec == std::errc::result_out_of_range) v = decimal(t);
  return negative ? -v : v;
}

// Python's % and // on integers (the result has the divisor's sign).
int64_t py_mod(int64_t a, int64_t b) {
  if (b == -1) return 0;
  const int64_t r = a % b;
  return r != 0 && (r < 0) != (b < 0) ? r + b : r;
}

class Renderer {
 public:
  int line = 0;  // of what is being evaluated, for errors

  Renderer(const std::vector<ChatMessage>& messages, bool add_generation_prompt, const std::string& bos_token,
           const std::string& eos_token)
      : max_steps_(kMaxSteps + kMaxStepsPerMessage * int64_t(messages.size())) {
    List list;
    for (const ChatMessage& m : messages) {
      Dict d;
      d.set("role", text(m.role));
      d.set("content", text(m.content));
      list.push_back(mapping(std::move(d)));
    }
    Frame& globals = frames_.emplace_back();
    globals["messages"] = sequence(std::move(list));
    globals["add_generation_prompt"] = boolean(add_generation_prompt);
    globals["bos_token"] = text(bos_token);
    globals["eos_token"] = text(eos_token);
    globals["tools"] = none();
    globals["documents"] = none();
  }

  void run(const std::vector<Stmt>& body, std::string& out) { exec(body, out); }

 private:
  enum class Flow { Normal, Break, Continue };
  using Frame = std::map<std::string_view, Value, std::less<>>;

  std::vector<Frame> frames_;  // [0]: the globals and the template's top level
  // In a macro, the frames it sees: its own from base_ up, and frames_[0, outer_) where it
  // was defined (as a closure).
  size_t base_ = 0, outer_ = 0;
  int64_t steps_ = 0, max_steps_;
  size_t work_ = 0;
  int depth_ = 0;
  Value captured_;  // the body of {% set x | filters %}, for the filters

  void step() {
    if (++steps_ > max_steps_) oops("the template takes more than the limit of {} steps", max_steps_);
  }

  // Counts a step and a level of recursion; notes the line for errors.
  struct Guard {
    Renderer& r;
    Guard(Renderer& renderer, int line) : r(renderer) {
      r.step();
      if (++r.depth_ > kMaxEvalDepth) oops("evaluation nested deeper than the limit of {} levels", kMaxEvalDepth);
      r.line = line;
    }
    ~Guard() { --r.depth_; }
  };

  // Work that scans or builds `bytes` bytes (or list slots).
  void charge(size_t bytes) {
    work_ += bytes;
    if (work_ > kMaxWorkBytes) oops("the template handles more than the limit of {} bytes of values", kMaxWorkBytes);
  }
  Value charged(Value v) {
    if (v.kind == Kind::String) charge(v.s->size());
    else if (v.kind == Kind::List || v.kind == Kind::Tuple) charge(v.list->size() * sizeof(Value));
    else if (v.kind == Kind::Dict || v.kind == Kind::Namespace) charge(v.dict->items.size() * sizeof(Value));
    return v;
  }
  const std::string& scanned(const std::string& s) {
    charge(s.size());
    return s;
  }
  std::string str_of(const Value& v) { return scanned(to_str(v)); }

  void emit(std::string& out, std::string_view s) {
    if (out.size() + s.size() > kMaxStringBytes)
      oops("the output is longer than the limit of {} bytes", kMaxStringBytes);
    charge(s.size());
    out += s;
  }

  // ---- statements ----

  Flow exec(const std::vector<Stmt>& body, std::string& out) {
    for (const Stmt& s : body)
      if (const Flow f = exec(s, out); f != Flow::Normal) return f;
    return Flow::Normal;
  }

  Flow exec(const Stmt& s, std::string& out) {
    Guard guard(*this, s.line);
    switch (s.kind) {
      case Stmt::Kind::Text: emit(out, s.text); break;
      case Stmt::Kind::Print: emit(out, to_str(eval(*s.exprs[0]))); break;
      case Stmt::Kind::If:
        for (size_t k = 0; k < s.exprs.size(); ++k)
          if (truthy(eval(*s.exprs[k]))) return exec(s.bodies[k], out);
        if (s.bodies.size() > s.exprs.size()) return exec(s.bodies.back(), out);
        break;
      case Stmt::Kind::For: return exec_for(s, out);
      case Stmt::Kind::Set: bind(s.names, eval(*s.exprs[0])); break;
      case Stmt::Kind::SetAttr: set_attr(s.names[0], s.text, eval(*s.exprs[0])); break;
      case Stmt::Kind::SetBlock: {
        std::string body;
        const Flow flow = exec_scoped(s.bodies[0], body);
        Value v = charged(text(std::move(body)));
        if (s.exprs[0]) {
          captured_ = std::move(v);
          v = eval(*s.exprs[0]);
        }
        if (s.text.empty()) bind(s.names, std::move(v));
        else set_attr(s.names[0], s.text, std::move(v));
        return flow;
      }
      case Stmt::Kind::Macro: frames_.back()[s.text] = function(Builtin::Macro, s.text, {}, &s, frames_.size()); break;
      case Stmt::Kind::Break: return Flow::Break;
      case Stmt::Kind::Continue: return Flow::Continue;
      case Stmt::Kind::Scope: {
        Frame frame;
        for (size_t k = 0; k < s.names.size(); ++k) frame[s.names[k]] = eval(*s.exprs[k]);
        return exec_scoped(s.bodies[0], out, std::move(frame));
      }
    }
    return Flow::Normal;
  }

  Flow exec_scoped(const std::vector<Stmt>& body, std::string& out, Frame frame = {}) {
    frames_.push_back(std::move(frame));
    const Flow flow = exec(body, out);
    frames_.pop_back();
    return flow;
  }

  // Each iteration has its own scope (a `set` in the body is gone in the next one), as in Jinja2.
  Flow exec_for(const Stmt& s, std::string& out) {
    const Value seq = eval(*s.exprs[0]);
    std::shared_ptr<const List> items = iterate(seq);
    if (s.exprs[1]) {
      List kept;
      for (const Value& item : *items) {
        step();
        frames_.emplace_back();
        bind(s.names, item);
        const bool keep = truthy(eval(*s.exprs[1]));
        frames_.pop_back();
        if (keep) kept.push_back(item);
      }
      charge(kept.size() * sizeof(Value));
      items = std::make_shared<const List>(std::move(kept));
    }
    if (items->empty()) return exec_scoped(s.bodies[1], out);
    Value loop;
    loop.kind = Kind::Loop;
    loop.list = items;
    loop.depth = std::max<uint8_t>(seq.depth, 1);
    loop.has_ns = seq.has_ns;
    for (size_t k = 0; k < items->size(); ++k) {
      step();
      frames_.emplace_back();
      bind(s.names, (*items)[k]);
      loop.i = int64_t(k);
      frames_.back()["loop"] = loop;
      const Flow flow = exec(s.bodies[0], out);
      frames_.pop_back();
      if (flow == Flow::Break) break;
    }
    return Flow::Normal;
  }

  // Assigns to one name, or unpacks into several, in the innermost scope.
  void bind(const std::vector<std::string>& names, Value v) {
    if (names.size() == 1) {
      frames_.back()[names[0]] = std::move(v);
      return;
    }
    const std::shared_ptr<const List> parts = iterate(v);
    if (parts->size() != names.size())
      oops("cannot unpack {} values into {} names", parts->size(), names.size());
    for (size_t k = 0; k < names.size(); ++k) frames_.back()[names[k]] = (*parts)[k];
  }

  void set_attr(const std::string& ns, const std::string& attr, Value v) {
    const Value* target = lookup(ns);
    if (!target || target->kind != Kind::Namespace) oops("cannot assign attribute on non-namespace object");
    if (v.has_ns) oops("a namespace cannot hold a namespace");
    target->dict->set(attr, std::move(v));
  }

  const Value* lookup(std::string_view name) const {
    auto find = [&](size_t k) -> const Value* {
      const auto it = frames_[k].find(name);
      return it == frames_[k].end() ? nullptr : &it->second;
    };
    for (size_t k = frames_.size(); k-- > base_;)
      if (const Value* v = find(k)) return v;
    for (size_t k = std::min(outer_, base_); k-- > 0;)
      if (const Value* v = find(k)) return v;
    return nullptr;
  }

  // ---- expressions ----

  Value eval(const Expr& e) {
    Guard guard(*this, e.line);
    switch (e.kind) {
      case Expr::Kind::Literal: return e.value;
      case Expr::Kind::Name: {
        if (const Value* v = lookup(e.name)) return *v;
        if (e.name == "range") return function(Builtin::Range, e.name);
        if (e.name == "namespace") return function(Builtin::Namespace, e.name);
        if (e.name == "dict") return function(Builtin::Dict, e.name);
        if (e.name == "raise_exception") return function(Builtin::RaiseException, e.name);
        return undefined(fmt::format("'{}' is undefined", e.name));
      }
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        List items;
        for (const ExprPtr& a : e.args) items.push_back(eval(*a));
        return charged(sequence(std::move(items), e.kind == Expr::Kind::Tuple));
      }
      case Expr::Kind::Dict: {
        Dict d;
        for (size_t k = 0; k < e.args.size(); k += 2) {
          const Value key = eval(*e.args[k]);
          if (key.kind != Kind::String) oops("dict keys must be strings here, not '{}'", type_name(key));
          d.set(*key.s, eval(*e.args[k + 1]));
        }
        return charged(mapping(std::move(d)));
      }
      case Expr::Kind::Attr: return get_attr(eval(*e.args[0]), e.name);
      case Expr::Kind::Item: {
        const Value obj = eval(*e.args[0]);
        return get_item(obj, eval(*e.args[1]));
      }
      case Expr::Kind::Slice: {
        const Value obj = eval(*e.args[0]);
        Value parts[3];
        for (int k = 0; k < 3; ++k)
          if (e.args[size_t(k) + 1]) parts[k] = eval(*e.args[size_t(k) + 1]);
          else parts[k] = none();
        return charged(slice(obj, parts));
      }
      case Expr::Kind::Call: {
        const Value f = eval(*e.args[0]);
        return charged(call(f, eval_args(e)));
      }
      case Expr::Kind::Filter: {
        const Value v = eval(*e.args[0]);
        return charged(filter(FilterId(e.code), e.name, v, eval_args(e)));
      }
      case Expr::Kind::Test: {
        const Value v = eval(*e.args[0]);
        return boolean(test(TestId(e.code), e.name, v, eval_args(e)));
      }
      case Expr::Kind::Not: return boolean(!truthy(eval(*e.args[0])));
      case Expr::Kind::Neg:
      case Expr::Kind::Pos: return unary(e.kind == Expr::Kind::Neg, eval(*e.args[0]));
      case Expr::Kind::Binary: {
        const Value a = eval(*e.args[0]);
        return charged(binary(Op(e.code), a, eval(*e.args[1])));
      }
      case Expr::Kind::Concat: {
        std::string s;
        for (const ExprPtr& a : e.args) append_str(s, eval(*a));
        return charged(text(std::move(s)));
      }
      case Expr::Kind::Compare: {
        Value left = eval(*e.args[0]);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.args[k + 1]);
          if (!compare(e.ops[k], left, right)) return boolean(false);
          left = std::move(right);
        }
        return boolean(true);
      }
      case Expr::Kind::And: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? eval(*e.args[1]) : a;
      }
      case Expr::Kind::Or: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? a : eval(*e.args[1]);
      }
      case Expr::Kind::Cond:
        if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
        if (e.args[2]) return eval(*e.args[2]);
        return undefined("the inline if expression evaluated to false and no else section was defined");
      case Expr::Kind::Captured: return captured_;
    }
    return {};
  }

  Args eval_args(const Expr& e) {
    Args a;
    const size_t first_kw = e.args.size() - e.keywords.size();
    for (size_t k = 1; k < e.args.size(); ++k) {
      Value v = eval(*e.args[k]);
      if (k < first_kw) a.pos.push_back(std::move(v));
      else a.kw.emplace_back(e.keywords[k - first_kw], std::move(v));
    }
    return a;
  }

  // ---- Python's operators ----

  bool equal(const Value& a, const Value& b) {
    step();
    if (is_number(a) && is_number(b))
      return is_integral(a) && is_integral(b) ? a.i == b.i : as_double(a) == as_double(b);
    if (a.kind != b.kind) return false;
    switch (a.kind) {
      case Kind::Undefined:
      case Kind::None: return true;
      case Kind::String: charge(std::min(a.s->size(), b.s->size())); return *a.s == *b.s;
      case Kind::List:
      case Kind::Tuple:
        if (a.list->size() != b.list->size()) return false;
        for (size_t k = 0; k < a.list->size(); ++k)
          if (!equal((*a.list)[k], (*b.list)[k])) return false;
        return true;
      case Kind::Dict:
        if (a.dict->items.size() != b.dict->items.size()) return false;
        for (const auto& [key, v] : a.dict->items) {
          const Value* other = b.dict->find(key);
          if (!other || !equal(v, *other)) return false;
        }
        return true;
      case Kind::Loop: return a.list == b.list && a.i == b.i;
      case Kind::Function: return a.fn == b.fn;
      default: return a.dict == b.dict;
    }
  }

  bool less(const Value& a, const Value& b, Op op) {
    if (a.kind == Kind::Undefined) undefined_error(a);
    if (b.kind == Kind::Undefined) undefined_error(b);
    if (is_number(a) && is_number(b)) return is_integral(a) && is_integral(b) ? a.i < b.i : as_double(a) < as_double(b);
    if (a.kind == Kind::String && b.kind == Kind::String) {
      charge(std::min(a.s->size(), b.s->size()));
      return *a.s < *b.s;
    }
    if ((a.kind == Kind::List || a.kind == Kind::Tuple) && a.kind == b.kind) {
      for (size_t k = 0; k < a.list->size() && k < b.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k])) return less((*a.list)[k], (*b.list)[k], op);
      return a.list->size() < b.list->size();
    }
    oops("'{}' not supported between instances of '{}' and '{}'", op_text(op), type_name(a), type_name(b));
  }

  bool contains(const Value& seq, const Value& item) {
    switch (seq.kind) {
      case Kind::Undefined: return false;
      case Kind::String:
        if (item.kind != Kind::String) oops("'in <string>' requires string as left operand, not {}", type_name(item));
        return find_sub(scanned(*seq.s), *item.s) != std::string::npos;
      case Kind::List:
      case Kind::Tuple:
        return std::any_of(seq.list->begin(), seq.list->end(), [&](const Value& v) { return equal(v, item); });
      case Kind::Dict:
        if (item.kind == Kind::List || item.kind == Kind::Dict) oops("unhashable type: '{}'", type_name(item));
        return item.kind == Kind::String && seq.dict->find(scanned(*item.s));
      default: oops("argument of type '{}' is not iterable", type_name(seq));
    }
  }

  bool compare(Op op, const Value& a, const Value& b) {
    switch (op) {
      case Op::Eq: return equal(a, b);
      case Op::Ne: return !equal(a, b);
      case Op::Lt: return less(a, b, op);
      case Op::Gt: return less(b, a, op);
      case Op::Le: return less(a, b, op) || equal(a, b);
      case Op::Ge: return less(b, a, op) || equal(a, b);
      case Op::In: return contains(b, a);
      default: return !contains(b, a);
    }
  }

  Value unary(bool negate, const Value& v) {
    if (v.kind == Kind::Undefined) undefined_error(v);
    if (v.kind == Kind::Float) return number(negate ? -v.f : v.f);
    if (!is_integral(v)) oops("bad operand type for unary {}: '{}'", negate ? '-' : '+', type_name(v));
    if (negate && v.i == INT64_MIN) oops("integer overflow");
    return integer(negate ? -v.i : v.i);
  }

  Value binary(Op op, const Value& a, const Value& b) {
    if (a.kind == Kind::Undefined) undefined_error(a);
    if (b.kind == Kind::Undefined) undefined_error(b);
    if (is_number(a) && is_number(b)) return arithmetic(op, a, b);
    const bool seq_a = a.kind == Kind::List || a.kind == Kind::Tuple;
    if (op == Op::Add && a.kind == b.kind && (a.kind == Kind::String || seq_a)) {
      if (a.kind == Kind::String) return text(*a.s + *b.s);
      if (a.list->size() + b.list->size() > kMaxItems) oops("a list longer than the limit of {} items", kMaxItems);
      List items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return sequence(std::move(items), a.kind == Kind::Tuple);
    }
    if (op == Op::Mul && (is_integral(a) || is_integral(b))) {
      const Value& seq = is_integral(a) ? b : a;
      const int64_t n = std::max<int64_t>(is_integral(a) ? a.i : b.i, 0);
      if (seq.kind == Kind::String) {
        if (!seq.s->empty() && uint64_t(n) > kMaxStringBytes / seq.s->size())
          oops("a string longer than the limit of {} bytes", kMaxStringBytes);
        std::string s;
        for (int64_t k = 0; k < n; ++k) s += *seq.s;
        return text(std::move(s));
      }
      if (seq.kind == Kind::List || seq.kind == Kind::Tuple) {
        if (!seq.list->empty() && uint64_t(n) > kMaxItems / seq.list->size())
          oops("a list longer than the limit of {} items", kMaxItems);
        List items;
        for (int64_t k = 0; k < n; ++k) items.insert(items.end(), seq.list->begin(), seq.list->end());
        return sequence(std::move(items), seq.kind == Kind::Tuple);
      }
    }
    if (op == Op::Mod && a.kind == Kind::String) oops("printf-style formatting (string % value) is not supported");
    oops("unsupported operand type(s) for {}: '{}' and '{}'", op_text(op), type_name(a), type_name(b));
  }

  static Value arithmetic(Op op, const Value& a, const Value& b) {
    if (is_integral(a) && is_integral(b)) {
      const int64_t x = a.i, y = b.i;
      int64_t r = 0;
      bool overflow = false;
      switch (op) {
        case Op::Add: overflow = __builtin_add_overflow(x, y, &r); break;
        case Op::Sub: overflow = __builtin_sub_overflow(x, y, &r); break;
        case Op::Mul: overflow = __builtin_mul_overflow(x, y, &r); break;
        case Op::Div:
          if (y == 0) oops("division by zero");
          return number(double(x) / double(y));
        case Op::FloorDiv:
        case Op::Mod:
          if (y == 0) oops("integer division or modulo by zero");
          if (op == Op::Mod) return integer(py_mod(x, y));
          if (x == INT64_MIN && y == -1) oops("integer overflow");
          return integer(x / y - (x % y != 0 && (x < 0) != (y < 0)));
        default:  // Pow
          if (y < 0) {
            if (x == 0) oops("0.0 cannot be raised to a negative power");
            return number(std::pow(double(x), double(y)));
          }
          r = 1;
          for (int64_t base = x, e = y; e > 0 && !overflow; e >>= 1) {
            if (e & 1) overflow = __builtin_mul_overflow(r, base, &r);
            if (e > 1 && !overflow) overflow = __builtin_mul_overflow(base, base, &base);
          }
      }
      if (overflow) oops("integer overflow (integers are 64-bit here)");
      return integer(r);
    }
    const double x = as_double(a), y = as_double(b);
    switch (op) {
      case Op::Add: return number(x + y);
      case Op::Sub: return number(x - y);
      case Op::Mul: return number(x * y);
      case Op::Div:
        if (y == 0) oops("float division by zero");
        return number(x / y);
      case Op::FloorDiv:
      case Op::Mod: {
        if (y == 0) oops("float divmod()");
        // CPython's float_divmod.
        double mod = std::fmod(x, y), div = (x - mod) / y;
        if (mod != 0) {
          if ((y < 0) != (mod < 0)) mod += y, div -= 1.0;
        } else {
          mod = std::copysign(0.0, y);
        }
        if (op == Op::Mod) return number(mod);
        if (div == 0) return number(std::copysign(0.0, x / y));
        const double floor = std::floor(div);
        return number(div - floor > 0.5 ? floor + 1.0 : floor);
      }
      default: {
        if (x == 0 && y < 0) oops("0.0 cannot be raised to a negative power");
        if (x < 0 && y != std::floor(y)) oops("a negative number to a fractional power is complex");
        const double r = std::pow(x, y);
        if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) oops("numerical result out of range");
        return number(r);
      }
    }
  }

  // ---- attributes, items, iteration ----

  static bool is_method(const Value& obj, std::string_view name) {
    static constexpr std::string_view kStr[] = {"strip", "lstrip", "rstrip", "startswith", "endswith", "split",
                                                "upper", "lower",  "capitalize", "replace", "join", "find"};
    static constexpr std::string_view kDict[] = {"get", "items", "keys", "values"};
    if (obj.kind == Kind::String) return std::find(std::begin(kStr), std::end(kStr), name) != std::end(kStr);
    if (obj.kind == Kind::Dict) return std::find(std::begin(kDict), std::end(kDict), name) != std::end(kDict);
    return obj.kind == Kind::Loop && name == "cycle";
  }

  // Jinja2's getattr: the attribute (a method, a namespace's or loop's), else the item.
  Value get_attr(const Value& obj, const std::string& name) {
    if (obj.kind == Kind::Undefined) undefined_error(obj);
    if (is_method(obj, name)) return function(Builtin::Method, name, obj);
    if (obj.kind == Kind::Dict || obj.kind == Kind::Namespace)
      if (const Value* v = obj.dict->find(name)) return *v;
    if (obj.kind == Kind::Loop) {
      const auto i = obj.i, n = int64_t(obj.list->size());
      if (name == "index") return integer(i + 1);
      if (name == "index0") return integer(i);
      if (name == "revindex") return integer(n - i);
      if (name == "revindex0") return integer(n - i - 1);
      if (name == "first") return boolean(i == 0);
      if (name == "last") return boolean(i == n - 1);
      if (name == "length") return integer(n);
      if (name == "depth") return integer(1);
      if (name == "depth0") return integer(0);
      if (name == "previtem") return i > 0 ? (*obj.list)[size_t(i - 1)] : undefined("there is no previous item");
      if (name == "nextitem") return i + 1 < n ? (*obj.list)[size_t(i + 1)] : undefined("there is no next item");
    }
    return undefined(fmt::format("'{} object' has no attribute '{}'", type_name(obj), excerpt(name)));
  }

  // Jinja2's getitem: the item, else (for a string key) the attribute.
  Value get_item(const Value& obj, const Value& key) {
    if (obj.kind == Kind::Undefined) undefined_error(obj);
    const bool seq = obj.kind == Kind::List || obj.kind == Kind::Tuple;
    if ((seq || obj.kind == Kind::String) && is_integral(key)) {
      const int64_t n = seq ? int64_t(obj.list->size()) : int64_t(cp_count(scanned(*obj.s)));
      const int64_t k = key.i < 0 ? key.i + n : key.i;
      if (k >= 0 && k < n) {
        return seq ? (*obj.list)[size_t(k)] : text(std::string(cp_at(*obj.s, size_t(k))));
      }
      return undefined(fmt::format("{} object has no element {}", type_name(obj), key.i));
    }
    if ((obj.kind == Kind::Dict || obj.kind == Kind::Namespace) && key.kind == Kind::String)
      if (const Value* v = obj.dict->find(scanned(*key.s))) return *v;
    if (key.kind == Kind::String) return get_attr(obj, *key.s);
    return undefined(fmt::format("{} object has no element of type '{}'", type_name(obj), type_name(key)));
  }

  // `item.a.0.b`, as map(attribute=...), selectattr and join(attribute=...) take it.
  Value get_path(Value item, const std::string& path) {
    for (size_t from = 0;;) {
      const size_t dot = std::min(path.find('.', from), path.size());
      const std::string part = path.substr(from, dot - from);
      const bool digits =
          !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
      item = get_item(item, digits && part.size() < 18 ? integer(std::stoll(part)) : text(part));
      if (dot == path.size()) return item;
      from = dot + 1;
    }
  }

  Value slice(const Value& obj, const Value (&parts)[3]) {
    if (obj.kind == Kind::Undefined) undefined_error(obj);
    const bool seq = obj.kind == Kind::List || obj.kind == Kind::Tuple;
    for (const Value& p : parts)
      if (p.kind != Kind::None && !is_integral(p)) oops("slice indices must be integers or None");
    if (!seq && obj.kind != Kind::String) oops("'{}' object is not subscriptable", type_name(obj));
    if (is_integral(parts[2]) && parts[2].i == 0) oops("slice step cannot be zero");
    // A string's code points by their byte offsets (and the end), unless all are ASCII.
    std::vector<uint32_t> at;
    const bool ascii = seq || std::all_of(obj.s->begin(), obj.s->end(), [](char c) { return (c & 0x80) == 0; });
    if (!seq) charge(obj.s->size());
    if (!ascii) {
      for (size_t i = 0; i < obj.s->size(); ++i)
        if (((*obj.s)[i] & 0xC0) != 0x80) at.push_back(uint32_t(i));
      at.push_back(uint32_t(obj.s->size()));
      charge(at.size() * sizeof(uint32_t));
    }
    const __int128 n = seq ? __int128(obj.list->size()) : ascii ? __int128(obj.s->size()) : __int128(at.size() - 1);
    const __int128 step = is_integral(parts[2]) ? parts[2].i : 1;
    // PySlice_AdjustIndices.
    auto adjust = [&](const Value& v, bool is_start) -> __int128 {
      const __int128 lower = step < 0 ? -1 : 0, upper = step < 0 ? n - 1 : n;
      if (!is_integral(v)) return (step < 0) == is_start ? upper : lower;
      __int128 k = v.i;
      if (k < 0) k = std::max(k + n, lower);
      return std::min(k, upper);
    };
    List items;
    std::string s;
    const __int128 stop = adjust(parts[1], false);
    for (__int128 k = adjust(parts[0], true); step > 0 ? k < stop : k > stop; k += step) {
      if (seq) items.push_back((*obj.list)[size_t(k)]);
      else if (ascii) s += (*obj.s)[size_t(k)];
      else s.append(*obj.s, at[size_t(k)], at[size_t(k) + 1] - at[size_t(k)]);
    }
    return seq ? sequence(std::move(items), obj.kind == Kind::Tuple) : text(std::move(s));
  }

  // What `for` goes through: items, characters, keys; nothing for undefined.
  std::shared_ptr<const List> iterate(const Value& v) {
    if (v.kind == Kind::List || v.kind == Kind::Tuple) return v.list;
    List items;
    if (v.kind == Kind::String) {
      if (cp_count(scanned(*v.s)) > kMaxItems) oops("a list longer than the limit of {} items", kMaxItems);
      for (size_t i = 0; i < v.s->size();) {
        const size_t from = i;
        next_cp(*v.s, i);
        items.push_back(text(v.s->substr(from, i - from)));
      }
    } else if (v.kind == Kind::Dict) {
      for (const auto& [key, value] : v.dict->items) items.push_back(text(key));
    } else if (v.kind != Kind::Undefined) {
      oops("'{}' object is not iterable", type_name(v));
    }
    charge(items.size() * sizeof(Value));
    return std::make_shared<const List>(std::move(items));
  }

  // ---- calls ----

  Value call(const Value& f, const Args& a) {
    if (f.kind == Kind::Undefined) undefined_error(f);
    if (f.kind != Kind::Function) oops("'{}' object is not callable", type_name(f));
    const Function& fn = *f.fn;
    switch (fn.type) {
      case Builtin::Range: {
        if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) oops("range() takes 1 to 3 positional arguments");
        for (const Value& v : a.pos)
          if (!is_integral(v)) oops("'{}' object cannot be interpreted as an integer", type_name(v));
        const __int128 start = a.pos.size() > 1 ? a.pos[0].i : 0, stop = a.pos.size() > 1 ? a.pos[1].i : a.pos[0].i,
                       step = a.pos.size() > 2 ? a.pos[2].i : 1;
        if (step == 0) oops("range() arg 3 must not be zero");
        const __int128 count = step > 0 ? (stop > start ? (stop - start - 1) / step + 1 : 0)
                                        : (start > stop ? (start - stop - 1) / -step + 1 : 0);
        if (count > __int128(kMaxItems)) oops("range() of more than the limit of {} items", kMaxItems);
        List items;
        for (__int128 k = 0; k < count; ++k) items.push_back(integer(int64_t(start + k * step)));
        return sequence(std::move(items));
      }
      case Builtin::Namespace:
      case Builtin::Dict: {
        Dict d;
        if (a.pos.size() > 1 || (a.pos.size() == 1 && a.pos[0].kind != Kind::Dict))
          oops("{}() takes a dict and keyword arguments", fn.name);
        if (!a.pos.empty()) d = *a.pos[0].dict;
        for (const auto& [name, v] : a.kw) d.set(std::string(name), v);
        Value v = mapping(std::move(d));
        if (fn.type == Builtin::Dict) return v;
        if (v.has_ns) oops("a namespace cannot hold a namespace");
        v.kind = Kind::Namespace;
        v.has_ns = true;
        v.depth = 1;
        return v;
      }
      case Builtin::RaiseException: throw RenderError{a.pos.empty() ? "" : to_str(a.pos[0]), true};
      case Builtin::Method: return call_method(fn.self, fn.name, a);
      case Builtin::Macro: return call_macro(fn, a);
    }
    return {};
  }

  Value call_macro(const Function& fn, const Args& a) {
    const Stmt& m = *fn.macro;
    if (a.pos.size() > m.names.size()) oops("macro '{}' takes not more than {} argument(s)", m.text, m.names.size());
    Frame frame;
    for (size_t k = 0; k < a.pos.size(); ++k) frame[m.names[k]] = a.pos[k];
    for (const auto& [name, v] : a.kw) {
      const auto it = std::find(m.names.begin(), m.names.end(), name);
      if (it == m.names.end()) oops("macro '{}' takes no keyword argument '{}'", m.text, name);
      if (!frame.emplace(*it, v).second) oops("macro '{}' got multiple values for argument '{}'", m.text, name);
    }
    const size_t outer_base = base_, outer_scope = outer_;
    outer_ = std::min(fn.scope, frames_.size());
    frames_.push_back(std::move(frame));
    base_ = frames_.size() - 1;
    for (size_t k = 0; k < m.names.size(); ++k)
      if (!frames_.back().contains(m.names[k]))
        frames_.back()[m.names[k]] =
            m.exprs[k] ? eval(*m.exprs[k]) : undefined(fmt::format("parameter '{}' was not provided", m.names[k]));
    std::string out;
    exec(m.bodies[0], out);
    frames_.pop_back();
    base_ = outer_base;
    outer_ = outer_scope;
    return text(std::move(out));
  }

  Value call_method(const Value& self, const std::string& name, const Args& a) {
    if (self.kind == Kind::Loop) {  // loop.cycle(a, b, ...)
      if (a.pos.empty()) oops("no items for cycling given");
      return a.pos[size_t(self.i) % a.pos.size()];
    }
    if (self.kind == Kind::Dict) {
      const Dict& d = *self.dict;
      if (name == "get") {
        const auto p = a.bind(name, {"key", "default"});
        if (!p[0]) oops("get() takes at least 1 argument");
        const Value* v = p[0]->kind == Kind::String ? d.find(scanned(*p[0]->s)) : nullptr;
        return v ? *v : p[1] ? *p[1] : none();
      }
      a.bind(name, {});
      List items;
      for (const auto& [key, v] : d.items)
        items.push_back(name == "keys" ? text(key) : name == "values" ? v : sequence({text(key), v}, true));
      return sequence(std::move(items));
    }
    const std::string& s = scanned(*self.s);
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return text(std::string(
          strip(s, str_arg(a.bind(name, {"chars"})[0], "chars"), name != "rstrip", name != "lstrip")));
    if (name == "upper" || name == "lower" || name == "capitalize") {
      a.bind(name, {});
      if (name == "capitalize") return text(capitalize(s));
      return text(map_case(s, name == "upper" ? utf8proc_toupper : utf8proc_tolower));
    }
    if (name == "startswith" || name == "endswith") {
      const Value* p = a.bind(name, {"prefix"})[0];
      if (!p) oops("{}() takes at least 1 argument", name);
      const std::shared_ptr<const List> options =
          p->kind == Kind::Tuple ? p->list : std::make_shared<const List>(List{*p});
      return boolean(std::any_of(options->begin(), options->end(), [&](const Value& o) {
        const std::string& x = required_str(&o, name + "() argument");
        return x.size() <= s.size() && s.compare(name == "startswith" ? 0 : s.size() - x.size(), x.size(), x) == 0;
      }));
    }
    if (name == "split") {
      const auto p = a.bind(name, {"sep", "maxsplit"});
      return sequence(split(s, str_arg(p[0], "sep"), int_arg(p[1], "maxsplit", -1)));
    }
    if (name == "replace") {
      const auto p = a.bind(name, {"old", "new", "count"});
      return text(replace(s, required_str(p[0], "old"), required_str(p[1], "new"), int_arg(p[2], "count", -1)));
    }
    if (name == "find") {
      const size_t at = find_sub(s, required_str(a.bind(name, {"sub"})[0], "sub"));
      return integer(at == std::string::npos ? -1 : int64_t(cp_count(std::string_view(s).substr(0, at))));
    }
    // join
    const Value* items = a.bind(name, {"iterable"})[0];
    if (!items) oops("join() takes exactly one argument");
    std::string out;
    const std::shared_ptr<const List> list = iterate(*items);
    for (size_t k = 0; k < list->size(); ++k, step()) {
      if ((*list)[k].kind != Kind::String)
        oops("sequence item {}: expected str instance, {} found", k, type_name((*list)[k]));
      if (k) out += s;
      out += *(*list)[k].s;
      check_size(out);
    }
    return text(std::move(out));
  }

  List split(const std::string& s, const std::string* sep, int64_t maxsplit) {
    List parts;
    auto add = [&](std::string_view part) {
      if (parts.size() >= kMaxItems) oops("a list longer than the limit of {} items", kMaxItems);
      parts.push_back(text(std::string(part)));
    };
    if (sep && sep->empty()) oops("empty separator");
    size_t from = 0;
    if (sep) {
      for (size_t at; maxsplit-- != 0 && (at = find_sub(s, *sep, from)) != std::string::npos; from = at + sep->size())
        add(std::string_view(s).substr(from, at - from));
      add(std::string_view(s).substr(from));
      return parts;
    }
    // Runs of whitespace separate; none at the ends.
    for (size_t i = 0;;) {
      while (i < s.size()) {
        size_t k = i;
        if (!py_space(next_cp(s, k))) break;
        i = k;
      }
      if (i >= s.size()) break;
      if (maxsplit-- == 0) {
        add(strip(std::string_view(s).substr(i), nullptr, false, true));
        break;
      }
      size_t end = i;
      while (end < s.size()) {
        size_t k = end;
        if (py_space(next_cp(s, k))) break;
        end = k;
      }
      add(std::string_view(s).substr(i, end - i));
      i = end;
    }
    return parts;
  }

  static std::string replace(const std::string& s, const std::string& old, const std::string& with, int64_t count) {
    std::string out;
    if (old.empty()) {  // Python puts `with` around every character
      for (size_t i = 0;;) {
        if (count == 0) return out + s.substr(i);
        out += with;
        --count;
        if (i == s.size()) return out;
        const size_t from = i;
        next_cp(s, i);
        out.append(s, from, i - from);
        check_size(out);
      }
    }
    size_t from = 0;
    for (size_t at; count-- != 0 && (at = find_sub(s, old, from)) != std::string::npos; from = at + old.size()) {
      out.append(s, from, at - from);
      out += with;
      check_size(out);
    }
    return out + s.substr(from);
  }

  // ---- filters and tests ----

  Value filter(FilterId id, std::string_view name, const Value& v, const Args& a) {
    Guard guard(*this, line);  // map('map', 'map', ...) recurses
    switch (id) {
      case FilterId::Unsupported: unsupported("filter", name, kUnsupportedFilters);
      case FilterId::Default: {
        const auto p = a.bind(name, {"default_value", "boolean"});
        if (v.kind == Kind::Undefined || (p[1] && truthy(*p[1]) && !truthy(v))) return p[0] ? *p[0] : text("");
        return v;
      }
      case FilterId::Length: {
        a.bind(name, {});
        switch (v.kind) {
          case Kind::String: return integer(int64_t(cp_count(scanned(*v.s))));
          case Kind::List:
          case Kind::Tuple:
          case Kind::Loop: return integer(int64_t(v.list->size()));
          case Kind::Dict: return integer(int64_t(v.dict->items.size()));
          case Kind::Undefined: return integer(0);
          default: oops("object of type '{}' has no len()", type_name(v));
        }
      }
      case FilterId::Trim: {
        const std::string s = str_of(v);
        return text(std::string(strip(s, str_arg(a.bind(name, {"chars"})[0], "chars"), true, true)));
      }
      case FilterId::Upper:
      case FilterId::Lower:
        a.bind(name, {});
        return text(map_case(str_of(v), id == FilterId::Upper ? utf8proc_toupper : utf8proc_tolower));
      case FilterId::Capitalize: return a.bind(name, {}), text(capitalize(str_of(v)));
      case FilterId::Title: return a.bind(name, {}), text(title(str_of(v)));
      case FilterId::String: return a.bind(name, {}), text(to_str(v));
      case FilterId::Safe: return a.bind(name, {}), text(to_str(v));  // Markup is a str
      case FilterId::ToJson: return text(to_json(v, a));
      case FilterId::Replace: {
        const auto p = a.bind(name, {"old", "new", "count"});
        if (!p[0] || !p[1]) oops("replace() takes at least 2 arguments");
        return text(replace(str_of(v), to_str(*p[0]), to_str(*p[1]), int_arg(p[2], "count", -1)));
      }
      case FilterId::Join: {
        const auto p = a.bind(name, {"d", "attribute"});
        const std::string sep = p[0] ? to_str(*p[0]) : "";
        std::string out;
        const std::shared_ptr<const List> items = iterate(v);
        for (size_t k = 0; k < items->size(); ++k, step()) {
          if (k) out += sep;
          append_str(out, given(p[1]) ? get_path((*items)[k], to_str(*p[1])) : (*items)[k]);
        }
        return text(std::move(out));
      }
      case FilterId::First:
      case FilterId::Last: {
        a.bind(name, {});
        if (v.kind == Kind::Undefined) return v;
        if (v.kind != Kind::String && v.kind != Kind::List && v.kind != Kind::Tuple && v.kind != Kind::Dict)
          oops("'{}' object is not iterable", type_name(v));
        if (v.kind == Kind::String && !v.s->empty()) {
          const size_t from = id == FilterId::First ? 0 : prev_cp(*v.s, v.s->size());
          return text(std::string(cp_at(std::string_view(*v.s).substr(from), 0)));
        }
        const size_t n = v.kind == Kind::Dict ? v.dict->items.size() : v.kind == Kind::String ? 0 : v.list->size();
        if (n == 0)
          return undefined(fmt::format("No {} item, sequence was empty.", id == FilterId::First ? "first" : "last"));
        const size_t k = id == FilterId::First ? 0 : n - 1;
        return v.kind == Kind::Dict ? text(v.dict->items[k].first) : (*v.list)[k];
      }
      case FilterId::List: return a.bind(name, {}), sequence(*iterate(v));
      case FilterId::Reverse: {
        a.bind(name, {});
        if (v.kind == Kind::String) {
          std::string out;
          for (size_t end = scanned(*v.s).size(); end > 0;) {
            const size_t start = prev_cp(*v.s, end);
            out.append(*v.s, start, end - start);
            end = start;
          }
          return text(std::move(out));
        }
        List items = *iterate(v);
        std::reverse(items.begin(), items.end());
        return sequence(std::move(items));
      }
      case FilterId::Items: {
        a.bind(name, {});
        if (v.kind == Kind::Undefined) return sequence({});
        if (v.kind != Kind::Dict) oops("Can only get item pairs from a mapping.");
        return call_method(v, "items", {});
      }
      case FilterId::Int: {
        const auto p = a.bind(name, {"default", "base"});
        const Value fallback = p[0] ? *p[0] : integer(0);
        if (v.kind == Kind::Undefined) undefined_error(v);
        if (is_integral(v)) return integer(v.i);
        if (v.kind == Kind::Float) return std::isnan(v.f) ? fallback : float_to_int(v.f);
        if (v.kind != Kind::String) return fallback;
        if (const auto i = parse_int(scanned(*v.s), int_arg(p[1], "base", 10))) return integer(*i);
        if (const auto f = parse_float(*v.s)) return std::isfinite(*f) ? float_to_int(*f) : fallback;
        return fallback;
      }
      case FilterId::Float: {
        const Value* fallback = a.bind(name, {"default"})[0];
        if (v.kind == Kind::Undefined) undefined_error(v);
        if (is_number(v)) return number(as_double(v));
        if (v.kind == Kind::String)
          if (const auto f = parse_float(scanned(*v.s))) return number(*f);
        return fallback ? *fallback : number(0.0);
      }
      case FilterId::Abs:
        a.bind(name, {});
        if (v.kind == Kind::Float) return number(std::fabs(v.f));
        if (!is_integral(v)) oops("bad operand type for abs(): '{}'", type_name(v));
        if (v.i == INT64_MIN) oops("integer overflow");
        return integer(std::abs(v.i));
      case FilterId::Indent: return text(indent(str_of(v), a));
      case FilterId::Map: {
        List out;
        const std::shared_ptr<const List> items = iterate(v);
        if (a.pos.empty()) {
          const auto p = a.bind(name, {"attribute", "default"});
          if (!p[0]) oops("map() needs a filter name or attribute=");
          for (const Value& item : *items) {
            step();
            Value x = get_path(item, to_str(*p[0]));
            out.push_back(x.kind == Kind::Undefined && given(p[1]) ? *p[1] : std::move(x));
          }
        } else {
          const std::string& filter_name = required_str(&a.pos[0], "map() filter name");
          const auto fid = find_id(kFilters, filter_name);
          if (!fid) oops("no filter named '{}'", excerpt(filter_name));
          Args rest{{a.pos.begin() + 1, a.pos.end()}, a.kw};
          for (const Value& item : *items) out.push_back(filter(*fid, filter_name, item, rest));
        }
        return sequence(std::move(out));
      }
      case FilterId::Select:
      case FilterId::Reject:
      case FilterId::SelectAttr:
      case FilterId::RejectAttr: {
        const bool attr = id == FilterId::SelectAttr || id == FilterId::RejectAttr;
        const bool keep = id == FilterId::Select || id == FilterId::SelectAttr;
        if (!a.kw.empty()) oops("{}() takes no keyword arguments", name);
        if (attr && a.pos.empty()) oops("{}() needs an attribute", name);
        const size_t t = attr ? 1 : 0;  // the test's name, then its arguments
        std::optional<TestId> tid;
        const std::string test_name = a.pos.size() > t ? required_str(&a.pos[t], "test name") : "";
        if (!test_name.empty() && !(tid = find_id(kTests, test_name))) oops("no test named '{}'", excerpt(test_name));
        Args rest{{a.pos.begin() + std::ptrdiff_t(std::min(a.pos.size(), t + 1)), a.pos.end()}, {}};
        List out;
        const std::shared_ptr<const List> items = iterate(v);
        for (const Value& item : *items) {
          step();
          const Value x = attr ? get_path(item, to_str(a.pos[0])) : item;
          if ((tid ? test(*tid, test_name, x, rest) : truthy(x)) == keep) out.push_back(item);
        }
        return sequence(std::move(out));
      }
    }
    return {};
  }

  template <size_t N>
  [[noreturn]] static void unsupported(const char* what, std::string_view name,
                                       const std::string_view (&jinja2_has)[N]) {
    if (std::find(std::begin(jinja2_has), std::end(jinja2_has), name) != std::end(jinja2_has))
      oops("the {} '{}' is not supported", what, name);
    oops("no {} named '{}'", what, name);
  }

  static Value float_to_int(double f) {
    if (!std::isfinite(f) || std::fabs(f) >= 9.2e18) oops("cannot convert float {} to an integer", float_repr(f));
    return integer(int64_t(f));
  }

  // Jinja2's title filter: each word's first character upper case, the rest lower case.
  static std::string title(const std::string& s) {
    std::string out;
    bool word_start = true;
    for (size_t i = 0; i < s.size();) {
      const char32_t c = next_cp(s, i);
      const bool separator = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_space(c);
      put_cp(out, separator ? c : char32_t(word_start ? utf8proc_toupper(int32_t(c)) : utf8proc_tolower(int32_t(c))));
      word_start = separator;
    }
    return out;
  }

  static std::string indent(const std::string& s, const Args& a) {
    const auto p = a.bind("indent", {"width", "first", "blank"});
    std::string pad(4, ' ');
    if (p[0] && p[0]->kind == Kind::String) pad = *p[0]->s;
    else if (p[0]) pad.assign(size_t(std::clamp<int64_t>(int_arg(p[0], "width", 4), 0, 1 << 16)), ' ');
    const bool first = p[1] && truthy(*p[1]), blank = p[2] && truthy(*p[2]);
    const std::vector<std::string> lines = split_lines(s + "\n");
    std::string out = first ? pad : "";
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k) out += '\n';
      if (k && (blank || !lines[k].empty())) out += pad;
      out += lines[k];
      check_size(out);
    }
    return out;
  }

  static std::string to_json(const Value& v, const Args& a) {
    const auto p = a.bind("tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
    JsonStyle st;
    st.ascii = p[0] && truthy(*p[0]);
    st.sort_keys = p[3] && truthy(*p[3]);
    if (given(p[1])) {
      if (p[1]->kind == Kind::String) st.indent = *p[1]->s;
      else st.indent = std::string(size_t(std::clamp<int64_t>(int_arg(p[1], "indent", 0), 0, 1 << 16)), ' ');
      st.item_sep = ",";
    }
    if (given(p[2])) {
      const Value& sep = *p[2];
      if ((sep.kind != Kind::List && sep.kind != Kind::Tuple) || sep.list->size() != 2)
        oops("separators must be a pair of strings");
      st.item_sep = required_str(&(*sep.list)[0], "separator");
      st.key_sep = required_str(&(*sep.list)[1], "separator");
    }
    std::string out;
    append_json(out, v, st, 0);
    return out;
  }

  bool test(TestId id, std::string_view name, const Value& v, const Args& a) {
    auto other = [&]() -> const Value& {
      const Value* x = a.bind(name, {"other"})[0];
      if (!x) oops("test '{}' needs an argument", name);
      return *x;
    };
    switch (id) {
      case TestId::Unsupported: unsupported("test", name, kUnsupportedTests);
      case TestId::Defined: return v.kind != Kind::Undefined;
      case TestId::Undefined: return v.kind == Kind::Undefined;
      case TestId::None: return v.kind == Kind::None;
      case TestId::Boolean: return v.kind == Kind::Bool;
      case TestId::True: return v.kind == Kind::Bool && v.i;
      case TestId::False: return v.kind == Kind::Bool && !v.i;
      case TestId::Integer: return v.kind == Kind::Int;
      case TestId::Float: return v.kind == Kind::Float;
      case TestId::Number: return is_number(v);
      case TestId::String: return v.kind == Kind::String;
      case TestId::Mapping: return v.kind == Kind::Dict;
      case TestId::Iterable:
        return v.kind == Kind::String || v.kind == Kind::List || v.kind == Kind::Tuple || v.kind == Kind::Dict ||
               v.kind == Kind::Undefined || v.kind == Kind::Loop;
      case TestId::Sequence:
        return v.kind == Kind::String || v.kind == Kind::List || v.kind == Kind::Tuple || v.kind == Kind::Dict ||
               v.kind == Kind::Undefined;
      case TestId::Callable: return v.kind == Kind::Function || v.kind == Kind::Undefined || v.kind == Kind::Loop;
      case TestId::Odd:
      case TestId::Even:
      case TestId::DivisibleBy: {
        const Value divisor = id == TestId::DivisibleBy ? other() : integer(2);
        const Value r = binary(Op::Mod, v, divisor);
        return id == TestId::Odd ? as_double(r) == 1 : as_double(r) == 0;
      }
      case TestId::Eq: return equal(v, other());
      case TestId::Ne: return !equal(v, other());
      case TestId::Lt: return compare(Op::Lt, v, other());
      case TestId::Le: return compare(Op::Le, v, other());
      case TestId::Gt: return compare(Op::Gt, v, other());
      case TestId::Ge: return compare(Op::Ge, v, other());
      case TestId::In: return contains(other(), v);
      case TestId::SameAs: {
        const Value& o = other();
        if (v.kind != o.kind) return false;
        if (v.kind == Kind::None || v.kind == Kind::Undefined) return true;
        if (is_number(v) || v.kind == Kind::String) return equal(v, o);
        return v.list == o.list && v.dict == o.dict && v.fn == o.fn;
      }
    }
    return false;
  }
};

}  // namespace

struct ChatTemplate::Program {
  std::vector<Stmt> body;
};

ChatTemplate::ChatTemplate(std::shared_ptr<const Program> program) : program_(std::move(program)) {}

ChatTemplate ChatTemplate::parse(std::string_view source) {
  if (source.size() > kMaxBytes)
    fail("[chat] template: {} bytes is over the limit of {} bytes", source.size(), kMaxBytes);
  if (const size_t bad = utf8::first_invalid(source); bad != std::string_view::npos)
    fail("[chat] template: not valid UTF-8 at byte offset {}", bad);
  // As Jinja2: every line break becomes \n, and one final line break is dropped.
  std::string src;
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r' && k + 1 < source.size() && source[k + 1] == '\n') continue;
    src += source[k] == '\r' ? '\n' : source[k];
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  auto program = std::make_shared<Program>();
  program->body = Parser(src, Lexer(src).run()).parse_template();
  return ChatTemplate(std::move(program));
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token) const {
  auto check = [](std::string_view s, const std::string& what) {
    if (const size_t bad = utf8::first_invalid(s); bad != std::string_view::npos)
      fail("[chat] {} is not valid UTF-8 (byte offset {})", what, bad);
  };
  for (size_t k = 0; k < messages.size(); ++k) {
    check(messages[k].role, fmt::format("message {} role", k));
    check(messages[k].content, fmt::format("message {} content", k));
  }
  check(bos_token, "bos_token");
  check(eos_token, "eos_token");
  std::string out;
  std::optional<Renderer> r;
  try {
    r.emplace(messages, add_generation_prompt, bos_token, eos_token);
    r->run(program_->body, out);
  } catch (const RenderError& e) {
    if (e.raised) fail("[chat] template error: {}", e.what);
    fail("[chat] render: {} (template line {})", e.what, r ? r->line : 0);
  }
  return out;
}

}  // namespace mamba2
