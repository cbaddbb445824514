// Tokenizer: reading tokenizer.json (what it may contain and what is refused), the encode
// pipeline (added tokens → NFC → added tokens on the normalized text → pre-tokenizer → BPE)
// and the ByteLevel decoder.
#include "mamba2/tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/file.h"
#include "core/json.h"
#include "core/utf8.h"
#include "mamba2/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace mamba2 {

using json = nlohmann::json;
using namespace tok;

namespace tok {

// Everything a loaded tokenizer holds (Tokenizer::Impl is this; the loader fills it).
struct TokenizerState {
  std::string where;  // the file, for errors
  bool nfc = false;   // the normalizer (NFC or none)
  AddedTokenMatcher raw_added;         // added tokens with normalized: false, matched on the input
  AddedTokenMatcher normalized_added;  // normalized: true, matched on the normalized text
  PreTokenizer pre;
  std::unique_ptr<BpeModel> bpe;

  // Per id: the bytes the ByteLevel decoder gives, whether decode(skip_special) drops it, and
  // whether the id exists at all (ids may have gaps).
  std::vector<std::string> bytes;
  std::vector<uint8_t> skippable, known;
  StringMap<int32_t> added_ids, vocab_ids;  // token strings → ids
  std::optional<int32_t> eos;

  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
};

}  // namespace tok

struct Tokenizer::Impl : TokenizerState {};

namespace {

// ---- reading tokenizer.json ----------------------------------------------------------------

// Accessors that name the file and the field when the JSON has another shape than expected.
struct JsonReader {
  const std::string& where;

  [[noreturn]] void bad(const std::string& field, const std::string& expected, const json& got) const {
    fail("[tokenizer] {}: {} must be {}, got {}", where, field, expected, got.dump().substr(0, 80));
  }
  const json* optional(const json& obj, const char* key) const {
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  const json& object(const json& obj, const char* key, const std::string& field) const {
    const auto it = obj.find(key);
    if (it == obj.end()) fail("[tokenizer] {}: {} is missing", where, field);
    if (!it->is_object()) bad(field, "an object", *it);
    return *it;
  }
  const json& array(const json& obj, const char* key, const std::string& field) const {
    const auto it = obj.find(key);
    if (it == obj.end()) fail("[tokenizer] {}: {} is missing", where, field);
    if (!it->is_array()) bad(field, "an array", *it);
    return *it;
  }
  std::string string(const json& obj, const char* key, const std::string& field) const {
    const auto it = obj.find(key);
    if (it == obj.end()) fail("[tokenizer] {}: {} is missing", where, field);
    if (!it->is_string()) bad(field, "a string", *it);
    return it->get<std::string>();
  }
  bool boolean(const json& obj, const char* key, bool fallback, const std::string& field) const {
    const json* v = optional(obj, key);
    if (!v) return fallback;
    if (!v->is_boolean()) bad(field, "true or false", *v);
    return v->get<bool>();
  }
  // The "type" of a component; `field` names the component ("normalizer").
  std::string type(const json& component, const std::string& field) const {
    if (!component.is_object()) bad(field, "an object or null", component);
    return string(component, "type", field + ".type");
  }
  [[noreturn]] void unsupported(const std::string& field, const std::string& type, const char* supported) const {
    fail("[tokenizer] {}: {} type '{}' is not supported (supported: {})", where, field, type, supported);
  }
};

// normalizer: null, NFC, or a Sequence of those. Returns whether text gets NFC.
bool read_normalizer(const JsonReader& r, const json& n, const std::string& field) {
  if (n.is_null()) return false;
  const std::string type = r.type(n, field);
  if (type == "NFC") return true;
  if (type == "Sequence") {
    bool nfc = false;
    const json& items = r.array(n, "normalizers", field + ".normalizers");
    for (size_t i = 0; i < items.size(); ++i)
      nfc = read_normalizer(r, items[i], field + ".normalizers[" + std::to_string(i) + "]") || nfc;
    return nfc;
  }
  r.unsupported(field, type, "NFC, Sequence, null");
}

Regex read_split(const JsonReader& r, const json& s, const std::string& field) {
  const std::string behavior = r.string(s, "behavior", field + ".behavior");
  if (behavior != "Isolated")
    fail("[tokenizer] {}: {}.behavior '{}' is not supported (supported: Isolated)", r.where, field, behavior);
  if (r.boolean(s, "invert", false, field + ".invert"))
    fail("[tokenizer] {}: {}.invert true is not supported", r.where, field);
  const json& pattern = r.object(s, "pattern", field + ".pattern");
  if (pattern.size() == 1 && pattern.contains("Regex")) {
    const std::string onig = r.string(pattern, "Regex", field + ".pattern.Regex");
    return Regex(onig_to_pcre2(onig, r.where + ": " + field + ".pattern"), r.where + ": " + field + ".pattern");
  }
  if (pattern.size() == 1 && pattern.contains("String")) {
    const std::string text = r.string(pattern, "String", field + ".pattern.String");
    if (text.empty()) fail("[tokenizer] {}: {}.pattern.String is empty", r.where, field);
    return Regex(text, r.where + ": " + field + ".pattern", /*literal=*/true);
  }
  r.bad(field + ".pattern", "{\"Regex\": ...} or {\"String\": ...}", pattern);
}

void read_byte_level(const JsonReader& r, const json& b, const std::string& field, PreTokenizer& pre) {
  pre.add_prefix_space = r.boolean(b, "add_prefix_space", true, field + ".add_prefix_space");
  if (r.boolean(b, "use_regex", true, field + ".use_regex"))
    pre.byte_level_split.emplace(onig_to_pcre2(kGpt2Pattern, "ByteLevel"), "ByteLevel pattern");
}

// pre_tokenizer: ByteLevel, or a Sequence of Split steps ending with ByteLevel (Llama 3, Qwen 2).
PreTokenizer read_pre_tokenizer(const JsonReader& r, const json& p) {
  constexpr const char* kSupported = "ByteLevel, Sequence of Split (Isolated) steps ending with ByteLevel";
  if (p.is_null())
    fail("[tokenizer] {}: pre_tokenizer null is not supported (a byte-level BPE needs ByteLevel)", r.where);
  PreTokenizer pre;
  const std::string type = r.type(p, "pre_tokenizer");
  if (type == "ByteLevel") {
    read_byte_level(r, p, "pre_tokenizer", pre);
    return pre;
  }
  if (type != "Sequence") r.unsupported("pre_tokenizer", type, kSupported);
  const json& steps = r.array(p, "pretokenizers", "pre_tokenizer.pretokenizers");
  for (size_t i = 0; i < steps.size(); ++i) {
    const std::string field = "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]";
    const std::string step = r.type(steps[i], field);
    if (step == "Split" && i + 1 < steps.size()) {
      pre.splits.push_back(read_split(r, steps[i], field));
    } else if (step == "ByteLevel" && i + 1 == steps.size()) {
      read_byte_level(r, steps[i], field, pre);
      return pre;
    } else {
      fail("[tokenizer] {}: {} type '{}' is not supported here (supported: {})", r.where, field, step, kSupported);
    }
  }
  fail("[tokenizer] {}: pre_tokenizer Sequence must end with ByteLevel", r.where);
}

// post_processor: whatever it adds, encode() is add_special_tokens=False, where `tokenizers`'
// post-processors add nothing and change only offsets. Known types are therefore accepted and
// ignored; unknown ones are refused, as their effect cannot be known.
void check_post_processor(const JsonReader& r, const json& p, const std::string& field) {
  if (p.is_null()) return;
  const std::string type = r.type(p, field);
  if (type == "Sequence") {
    const json& items = r.array(p, "processors", field + ".processors");
    for (size_t i = 0; i < items.size(); ++i)
      check_post_processor(r, items[i], field + ".processors[" + std::to_string(i) + "]");
    return;
  }
  if (type != "ByteLevel" && type != "TemplateProcessing" && type != "BertProcessing" && type != "RobertaProcessing")
    r.unsupported(field, type, "ByteLevel, TemplateProcessing, BertProcessing, RobertaProcessing, Sequence, null");
}

struct ModelFile {
  StringMap<int32_t> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  BpeOptions options;
};

ModelFile read_model(const JsonReader& r, const json& root) {
  const json& m = r.object(root, "model", "model");
  if (m.contains("type")) {
    const std::string type = r.string(m, "type", "model.type");
    if (type != "BPE") r.unsupported("model", type, "BPE");
  }
  ModelFile f;
  if (const json* d = r.optional(m, "dropout")) {
    if (!d->is_number()) r.bad("model.dropout", "a number or null", *d);
    if (d->get<double>() != 0.0)
      fail("[tokenizer] {}: model.dropout {} is not supported (only null or 0: encoding is deterministic)", r.where,
           d->dump());
  }
  if (const json* u = r.optional(m, "unk_token")) {
    if (!u->is_string()) r.bad("model.unk_token", "a string or null", *u);
    f.options.unk_token = u->get<std::string>();
  }
  f.options.fuse_unk = r.boolean(m, "fuse_unk", false, "model.fuse_unk");
  f.options.ignore_merges = r.boolean(m, "ignore_merges", false, "model.ignore_merges");
  if (r.boolean(m, "byte_fallback", false, "model.byte_fallback"))
    fail("[tokenizer] {}: model.byte_fallback true is not supported", r.where);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = r.optional(m, key);
    if (v && !(v->is_string() && v->get<std::string>().empty()))
      fail("[tokenizer] {}: model.{} {} is not supported (only null)", r.where, key, v->dump());
  }

  const json& vocab = r.object(m, "vocab", "model.vocab");
  f.vocab.reserve(vocab.size());
  std::unordered_map<int32_t, const std::string*> owner;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= INT32_MAX)
      r.bad("model.vocab[\"" + token + "\"]", "a non-negative 32-bit id", id);
    const auto [it, fresh] = f.vocab.emplace(token, int32_t(id.get<int64_t>()));
    const auto [prev, unique] = owner.emplace(it->second, &it->first);
    if (!unique)
      fail("[tokenizer] {}: model.vocab gives id {} to both '{}' and '{}'", r.where, it->second, *prev->second, token);
  }

  const json& merges = r.array(m, "merges", "model.merges");
  f.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& e = merges[i];
    const std::string field = "model.merges[" + std::to_string(i) + "]";
    if (e.is_string()) {
      // The "a b" form; `tokenizers` skips a "#version" header line in it.
      const std::string line = e.get<std::string>();
      if (line.starts_with("#version")) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        r.bad(field, "two tokens separated by one space", e);
      f.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      f.merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      r.bad(field, "\"a b\" or [\"a\", \"b\"]", e);
    }
  }
  return f;
}

struct AddedToken {
  std::string content;
  bool special = false, normalized = true, single_word = false, lstrip = false, rstrip = false;
  bool operator==(const AddedToken&) const = default;
};

std::vector<AddedToken> read_added_tokens(const JsonReader& r, const json& root) {
  std::vector<AddedToken> tokens;
  const json* list = r.optional(root, "added_tokens");
  if (!list) return tokens;
  if (!list->is_array()) r.bad("added_tokens", "an array", *list);
  for (size_t i = 0; i < list->size(); ++i) {
    const json& t = (*list)[i];
    const std::string field = "added_tokens[" + std::to_string(i) + "]";
    if (!t.is_object()) r.bad(field, "an object", t);
    AddedToken a;
    a.content = r.string(t, "content", field + ".content");
    a.special = r.boolean(t, "special", false, field + ".special");
    a.normalized = r.boolean(t, "normalized", !a.special, field + ".normalized");
    a.single_word = r.boolean(t, "single_word", false, field + ".single_word");
    a.lstrip = r.boolean(t, "lstrip", false, field + ".lstrip");
    a.rstrip = r.boolean(t, "rstrip", false, field + ".rstrip");
    tokens.push_back(std::move(a));
  }
  return tokens;
}

void build(const json& root, const std::string& where, TokenizerState& state) {
  const JsonReader r{where};
  if (!root.is_object()) r.bad("the top level", "an object", root);
  if (const json* v = r.optional(root, "version"); v && *v != "1.0")
    fail("[tokenizer] {}: version {} is not supported (supported: \"1.0\")", where, v->dump());
  for (const char* key : {"truncation", "padding"})
    if (r.optional(root, key))
      fail("[tokenizer] {}: {} is not supported (it must be null: encode returns every token)", where, key);

  ModelFile model = read_model(r, root);
  state.where = where;
  state.nfc = read_normalizer(r, root.value("normalizer", json()), "normalizer");
  state.pre = read_pre_tokenizer(r, root.value("pre_tokenizer", json()));
  check_post_processor(r, root.value("post_processor", json()), "post_processor");
  const json decoder = root.value("decoder", json());
  if (decoder.is_null()) fail("[tokenizer] {}: decoder null is not supported (supported: ByteLevel)", where);
  if (const std::string type = r.type(decoder, "decoder"); type != "ByteLevel")
    r.unsupported("decoder", type, "ByteLevel");
  const auto vocab_entries = int64_t(model.vocab.size());

  // Added tokens get ids as `tokenizers`' AddedVocabulary::add_tokens gives them (the "id" in the
  // file is only checked there, with a warning): a token already known keeps its id, a new one
  // takes the next id after the model's vocabulary.
  std::unordered_map<int32_t, AddedToken> added_by_id;
  std::unordered_map<int32_t, std::string> normalized_form;  // normalized tokens NFC changes
  std::unordered_set<std::string> special_contents;
  auto next_id = int32_t(vocab_entries);
  for (AddedToken& t : read_added_tokens(r, root)) {
    if (t.content.empty()) continue;
    if (const auto known = state.added_ids.find(t.content);
        known != state.added_ids.end() && added_by_id.at(known->second) == t)
      continue;
    int32_t id;
    if (const auto a = state.added_ids.find(t.content); a != state.added_ids.end())
      id = a->second;
    else if (const auto v = model.vocab.find(t.content); v != model.vocab.end())
      id = v->second;
    else
      id = next_id++;
    std::string normalized;
    if (t.normalized && state.nfc && nfc(t.content, normalized))
      normalized_form[id] = std::move(normalized);
    state.added_ids[t.content] = id;
    if (t.special) special_contents.insert(t.content);
    added_by_id[id] = std::move(t);
  }

  // Tries in id order, so that errors and matching do not depend on hash order.
  std::vector<int32_t> added_order;
  for (const auto& [id, t] : added_by_id) added_order.push_back(id);
  std::sort(added_order.begin(), added_order.end());
  std::vector<AddedTokenPattern> raw, normalized;
  for (const int32_t id : added_order) {
    const AddedToken& t = added_by_id.at(id);
    const auto n = normalized_form.find(id);
    AddedTokenPattern p{t.normalized && n != normalized_form.end() ? n->second : t.content, id, t.single_word,
                        t.lstrip, t.rstrip};
    (t.normalized ? normalized : raw).push_back(std::move(p));
  }
  state.raw_added = AddedTokenMatcher(std::move(raw), where);
  state.normalized_added = AddedTokenMatcher(std::move(normalized), where);

  // Each id's string as the decoder sees it: an added token's (normalized) content, else the
  // vocabulary's. Ids beyond the tokens are a gap a corrupt file could make huge: refuse.
  int64_t max_id = -1;
  for (const auto& [token, id] : model.vocab) max_id = std::max<int64_t>(max_id, id);
  for (const int32_t id : added_order) max_id = std::max<int64_t>(max_id, id);
  const int64_t tokens = vocab_entries + int64_t(added_order.size());
  if (max_id >= 2 * tokens + 1024)
    fail("[tokenizer] {}: token ids are too sparse (largest id {} for {} tokens)", where, max_id, tokens);
  const auto size = size_t(max_id + 1);
  state.bytes.resize(size);
  state.skippable.assign(size, 0);
  state.known.assign(size, 0);
  auto set_token = [&](int32_t id, const std::string& text) {
    std::optional<std::string> decoded = byte_level_decode(text);
    state.bytes[size_t(id)] = decoded ? std::move(*decoded) : text;
    // `tokenizers` skips by the string it decodes, compared with the special tokens' contents.
    state.skippable[size_t(id)] = special_contents.contains(text);
    state.known[size_t(id)] = 1;
  };
  for (const auto& [token, id] : model.vocab)
    if (!added_by_id.contains(id)) set_token(id, token);
  for (const int32_t id : added_order) {
    const auto n = normalized_form.find(id);
    set_token(id, n != normalized_form.end() ? n->second : added_by_id.at(id).content);
  }

  state.vocab_ids = model.vocab;
  if (const auto it = state.added_ids.find("<|endoftext|>"); it != state.added_ids.end()) {
    state.eos = it->second;
  } else if (const auto v = model.vocab.find("<|endoftext|>"); v != model.vocab.end()) {
    state.eos = v->second;
  } else {
    for (const char* name : {"</s>", "<eos>"}) {
      const auto a = state.added_ids.find(name);
      if (a != state.added_ids.end() && added_by_id.at(a->second).special) {
        state.eos = a->second;
        break;
      }
    }
  }
  state.bpe = std::make_unique<BpeModel>(model.vocab, model.merges, std::move(model.options), where);
}

}  // namespace

// ---- encode / decode -------------------------------------------------------------------------

void TokenizerState::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<TextPiece> raw_pieces, normalized_pieces;
  std::string normalized_text, prefixed;
  auto encode_word = [&](std::string_view word) { bpe->encode_word(word, out); };
  auto split = [](const AddedTokenMatcher& m, std::string_view s, std::vector<TextPiece>& pieces) {
    if (m.empty())
      pieces.assign(1, TextPiece{0, s.size(), -1});
    else
      m.split(s, pieces);
  };
  split(raw_added, text, raw_pieces);
  for (const TextPiece& p : raw_pieces) {
    if (p.id >= 0) {
      out.push_back(p.id);
      continue;
    }
    std::string_view piece = text.substr(p.begin, p.end - p.begin);
    if (piece.empty()) continue;
    if (nfc && tok::nfc(piece, normalized_text)) piece = normalized_text;
    split(normalized_added, piece, normalized_pieces);
    for (const TextPiece& q : normalized_pieces) {
      if (q.id >= 0)
        out.push_back(q.id);
      else if (q.end > q.begin)
        pre.for_each_word(piece.substr(q.begin, q.end - q.begin), prefixed, encode_word);
    }
  }
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::filesystem::path& path) {
  const std::string where = path.string();
  const json root = is_gguf(path) ? gguf_tokenizer_json(read_gguf(path, false), "[tokenizer] " + where)
                                  : parse_json(read_file(path, "[tokenizer]"), "[tokenizer] " + where);
  try {
    auto impl = std::make_unique<Impl>();
    build(root, where, *impl);
    return Tokenizer(std::move(impl));
  } catch (const json::exception& e) {
    fail("[tokenizer] {}: unexpected JSON content ({})", where, e.what());
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  if (const size_t bad = utf8::first_invalid(text); bad != std::string_view::npos)
    fail("[tokenizer] encode: the text is not valid UTF-8 (byte offset {}, byte 0x{:02X})", bad,
         static_cast<unsigned char>(text[bad]));
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  impl_->encode_text(text, ids);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    const std::string& b = token_bytes(id);
    if (!(skip_special && impl_->skippable[size_t(id)])) bytes += b;
  }
  std::string text;
  utf8::append_lossy(bytes, text);
  return text;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || size_t(id) >= impl_->known.size() || !impl_->known[size_t(id)])
    fail("[tokenizer] {}: token id {} is not in the vocabulary (ids 0..{})", impl_->where, id,
         int64_t(impl_->known.size()) - 1);
  return impl_->bytes[size_t(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->skippable.size() && impl_->skippable[size_t(id)];
}

int32_t Tokenizer::vocab_size() const { return int32_t(impl_->known.size()); }

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  if (const auto a = impl_->added_ids.find(token); a != impl_->added_ids.end()) return a->second;
  if (const auto v = impl_->vocab_ids.find(token); v != impl_->vocab_ids.end()) return v->second;
  return std::nullopt;
}

std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

}  // namespace mamba2
