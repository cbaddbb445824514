#include "train/data.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/utf8.h"
#include "io/atomic_file.h"
#include "io/tensor_archive.h"
#include "core/json.h"
#include "mamba2/error.h"

namespace mamba2::training {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "mamba2-token-corpus";
constexpr int kVersion = 1;

struct Source {
  std::string path;
  uint64_t bytes = 0;
  int64_t mtime_ns = 0;
  bool operator==(const Source&) const = default;
};

Source describe(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) fail("[data] cannot read {}", p.string());
  return {fs::weakly_canonical(p).string(), uint64_t(st.st_size), int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

bool ascii_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool ascii_letter(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// The last position p in [from, buf.size()) where the text may be cut before buf[p].
size_t last_cut(const std::string& buf, size_t from) {
  for (size_t p = buf.size(); p-- > std::max<size_t>(from, 2);) {
    const auto c = static_cast<unsigned char>(buf[p]), nl = static_cast<unsigned char>(buf[p - 1]),
               before = static_cast<unsigned char>(buf[p - 2]);
    if (nl == '\n' && before < 0x80 && !ascii_space(before) && ascii_letter(c)) return p;
  }
  return 0;
}

std::string hex(uint64_t v) { return fmt::format("{:016x}", v); }

std::string corpus_fingerprint(const json& meta) {
  json j = meta;
  j.erase("fingerprint");
  const std::string s = j.dump();
  return hex(fnv1a(s.data(), s.size()));
}

// A buffered little-endian writer of ids into an AtomicFile.
class IdWriter {
 public:
  IdWriter(AtomicFile& f, int width) : f_(f), width_(width) {}
  void put(int32_t id) {
    const uint32_t v = uint32_t(id);
    for (int i = 0; i < width_; ++i) buf_.push_back(static_cast<unsigned char>(v >> (8 * i)));
    if (buf_.size() >= (size_t(1) << 20)) flush();
  }
  void flush() {
    f_.write(buf_.data(), buf_.size());
    buf_.clear();
  }

 private:
  AtomicFile& f_;
  int width_;
  std::vector<unsigned char> buf_;
};

}  // namespace

uint64_t fnv1a(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

uint64_t hash_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("[data] cannot open {}", path.string());
  std::vector<char> buf(size_t(1) << 16);
  uint64_t h = 0xcbf29ce484222325ull;
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    h = fnv1a(buf.data(), size_t(in.gcount()), h);
  }
  return h;
}

std::vector<fs::path> expand_sources(const std::vector<fs::path>& paths, const std::string& key) {
  std::vector<fs::path> out;
  for (const fs::path& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> found;
      for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::follow_directory_symlink, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
        if (it->is_regular_file() && it->path().extension() == ".txt") found.push_back(it->path());
      if (ec) fail("[data] {}: cannot list the folder {}: {}", key, p.string(), ec.message());
      if (found.empty()) fail("[data] {}: the folder {} holds no .txt files", key, p.string());
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(p, ec)) {
      out.push_back(p);
    } else {
      fail("[data] {}: {} does not exist (or is not a file or folder)", key, p.string());
    }
  }
  return out;
}

void encode_file(const Tokenizer& tok, const fs::path& path, size_t block_bytes,
                 const std::function<void(std::span<const int32_t>)>& emit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("[data] cannot open {}", path.string());
  block_bytes = std::max<size_t>(block_bytes, 16);
  std::string buf;
  uint64_t base = 0;     // file offset of buf[0]
  size_t searched = 0;   // buf[0, searched) holds no cut
  auto encode = [&](std::string_view part) {
    const size_t bad = utf8::first_invalid(part);
    if (bad != std::string_view::npos)
      fail("[data] {} is not valid UTF-8 (byte offset {}, byte 0x{:02X})", path.string(), base + bad,
           static_cast<unsigned char>(part[bad]));
    const std::vector<int32_t> ids = tok.encode(part);
    if (!ids.empty()) emit(ids);
  };
  while (true) {
    const size_t old = buf.size();
    buf.resize(old + block_bytes);
    in.read(buf.data() + old, std::streamsize(block_bytes));
    buf.resize(old + size_t(in.gcount()));
    if (in.bad()) fail("[data] cannot read {}", path.string());
    if (!in) break;  // end of file: the rest is encoded below
    const size_t cut = last_cut(buf, searched);
    if (cut == 0) {
      searched = buf.size() >= 2 ? buf.size() - 2 : 0;
      continue;
    }
    encode(std::string_view(buf).substr(0, cut));
    buf.erase(0, cut);
    base += cut;
    searched = 0;
  }
  encode(buf);
}

bool prepare_corpus(const Tokenizer& tok, uint64_t tokenizer_hash, const std::vector<fs::path>& files, const fs::path& dir,
                    const std::string& name, const std::function<void(const std::string&)>& log, size_t block_bytes) {
  fs::create_directories(dir);
  const fs::path meta_path = dir / (name + ".json"), tokens_path = dir / (name + ".tokens"),
                 docs_path = dir / (name + ".docs");
  std::vector<Source> sources;
  for (const fs::path& f : files) sources.push_back(describe(f));
  json jsources = json::array();
  for (const Source& s : sources) jsources.push_back({{"path", s.path}, {"bytes", s.bytes}, {"mtime_ns", s.mtime_ns}});
  const int width = tok.vocab_size() <= 65536 ? 2 : 4;
  const std::optional<int32_t> eos = tok.eos_id();

  // Up to date: the same tokenizer and sources, and files of the sizes the metadata gives.
  std::string why = "no tokenized copy yet";
  if (fs::exists(meta_path)) {
    try {
      const json m = read_json_file(meta_path, "[data]");
      if (m.at("format") != kFormat || m.at("version") != kVersion) why = "its format changed";
      else if (m.at("tokenizer_hash") != hex(tokenizer_hash)) why = "the tokenizer changed";
      else if (m.at("sources") != jsources) why = "the source files changed";
      else if (m.at("fingerprint") != corpus_fingerprint(m)) why = "its metadata is damaged";
      else if (!fs::exists(tokens_path) || !fs::exists(docs_path) ||
               fs::file_size(tokens_path) != m.at("tokens").get<uint64_t>() * m.at("token_bytes").get<uint64_t>() ||
               fs::file_size(docs_path) != m.at("documents").get<uint64_t>() * 8)
        why = "its token files are missing or truncated";
      else
        return false;
    } catch (const std::exception&) {
      why = "its metadata cannot be read";
    }
    if (log) log(fmt::format("re-tokenizing {} ({})", (dir / name).string(), why));
  }
  if (log) log(fmt::format("tokenizing {} file(s) into {}", files.size(), tokens_path.string()));

  int64_t pos = 0, documents = 0, skipped = 0;
  {
    AtomicFile tokens_file(tokens_path, "[data]"), docs_file(docs_path, "[data]");
    IdWriter ids_out(tokens_file, width);
    for (const fs::path& f : files) {
      bool started = false;
      encode_file(tok, f, block_bytes, [&](std::span<const int32_t> ids) {
        if (!started) {
          const uint64_t start = uint64_t(pos);
          docs_file.write(&start, sizeof(start));
          ++documents;
          if (eos) {
            ids_out.put(*eos);
            ++pos;
          }
          started = true;
        }
        for (int32_t id : ids) ids_out.put(id);
        pos += int64_t(ids.size());
      });
      if (!started) ++skipped;
    }
    if (eos && documents > 0) {
      ids_out.put(*eos);
      ++pos;
    }
    if (documents == 0) fail("[data] {}: the {} file(s) hold no tokens", name, files.size());
    ids_out.flush();
    tokens_file.commit();
    docs_file.commit();
  }
  json meta = {{"format", kFormat},
               {"version", kVersion},
               {"token_bytes", width},
               {"tokens", pos},
               {"documents", documents},
               {"skipped_empty", skipped},
               {"eos_id", eos ? json(*eos) : json(nullptr)},
               {"tokenizer_hash", hex(tokenizer_hash)},
               {"layout", "ids of each document, preceded by eos_id (when set), one eos_id after the last; "
                          ".docs: uint64 start of each document"},
               {"sources", jsources}};
  meta["fingerprint"] = corpus_fingerprint(meta);
  const std::string text = meta.dump(1) + "\n";
  AtomicFile mf(meta_path, "[data]");
  mf.write(text.data(), text.size());
  mf.commit();
  if (log) log(fmt::format("{}: {} tokens in {} documents{}", name, pos, documents,
                           skipped ? fmt::format(" ({} empty files skipped)", skipped) : std::string()));
  return true;
}

TokenCorpus TokenCorpus::open(const fs::path& dir, const std::string& name) {
  const fs::path meta_path = dir / (name + ".json");
  const json m = read_json_file(meta_path, "[data]");
  TokenCorpus c;
  const std::string where = meta_path.string();
  // Counts must be integers in range before they size anything (the file may be damaged).
  auto count = [&](const char* key, int64_t lo, int64_t hi) -> int64_t {
    const auto it = m.find(key);
    if (it == m.end()) fail("[data] {}: '{}' is missing", where, key);
    if (!it->is_number_integer() || (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t(hi)) ||
        it->get<int64_t>() < lo || it->get<int64_t>() > hi)
      fail("[data] {}: '{}' must be an integer in [{}, {}], got {}", where, key, lo, hi, json_excerpt(*it));
    return it->get<int64_t>();
  };
  if (!m.is_object()) fail("[data] {}: not a JSON object", where);
  c.tokens_ = count("tokens", 0, int64_t(1) << 48);
  c.documents_ = count("documents", 0, c.tokens_);
  c.token_bytes_ = int(count("token_bytes", 2, 4));
  if (c.token_bytes_ != 2 && c.token_bytes_ != 4) fail("[data] {}: token_bytes must be 2 or 4", where);
  if (m.contains("eos_id") && !m["eos_id"].is_null()) c.eos_ = int32_t(count("eos_id", 0, INT32_MAX));
  if (!m.contains("fingerprint") || !m["fingerprint"].is_string()) fail("[data] {}: 'fingerprint' is missing", where);
  c.fingerprint_ = m["fingerprint"].get<std::string>();
  c.tokens_file_ = std::make_shared<const MappedFile>(dir / (name + ".tokens"));
  c.docs_file_ = std::make_shared<const MappedFile>(dir / (name + ".docs"));
  if (c.tokens_file_->size() != uint64_t(c.tokens_) * uint64_t(c.token_bytes_) ||
      c.docs_file_->size() != uint64_t(c.documents_) * 8)
    fail("[data] {}: the token files do not have the sizes its metadata gives", where);
  // Document starts: ascending and inside the token stream, as the row cutting assumes.
  uint64_t prev = 0;
  for (int64_t i = 0; i < c.documents_; ++i) {
    uint64_t v;
    std::memcpy(&v, c.docs_file_->data() + 8 * i, 8);
    if (v >= uint64_t(c.tokens_) || (i > 0 && v <= prev))
      fail("[data] {}: document start {} ({}) is not ascending inside the {} tokens", where, i, v, c.tokens_);
    prev = v;
  }
  return c;
}

void TokenCorpus::read(int64_t begin, int64_t count, int32_t* out) const {
  if (begin < 0 || count < 0 || begin + count > tokens_)
    fail("[data] tokens [{}, {}) are outside the corpus of {}", begin, begin + count, tokens_);
  const unsigned char* p = tokens_file_->data() + begin * token_bytes_;
  if (token_bytes_ == 2) {
    for (int64_t i = 0; i < count; ++i) out[i] = int32_t(uint32_t(p[2 * i]) | uint32_t(p[2 * i + 1]) << 8);
  } else {
    for (int64_t i = 0; i < count; ++i) {
      uint32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      out[i] = int32_t(v);
    }
  }
}

std::vector<int64_t> TokenCorpus::starts_between(int64_t lo, int64_t hi) const {
  const auto* d = reinterpret_cast<const uint64_t*>(docs_file_->data());
  const uint64_t* e = d + documents_;
  std::vector<int64_t> out;
  for (const uint64_t* it = lo < 0 ? d : std::upper_bound(d, e, uint64_t(lo)); it != e && int64_t(*it) < hi; ++it)
    out.push_back(int64_t(*it));
  return out;
}

int64_t CorpusRange::rows(int64_t seq_len) const {
  const int64_t len = end - begin;
  return seq_len < 2 || len < seq_len ? 0 : (len - seq_len) / (seq_len - 1) + 1;
}

void CorpusRange::append_row(int64_t S, int64_t k, Batch& batch, const Tokenizer* bytes_of) const {
  const int64_t a = begin + k * (S - 1), b = a + S;
  if (k < 0 || b > end) fail("[data] row {} is outside the range of {} rows", k, rows(S));
  std::vector<int32_t> tokens(static_cast<size_t>(S));
  corpus->read(a, S, tokens.data());
  const std::optional<int32_t> eos = corpus->eos();
  auto add = [&](int64_t p, int64_t e) {
    if (e - p < 2) return;
    batch.ids.insert(batch.ids.end(), tokens.begin() + (p - a), tokens.begin() + (e - a));
    batch.lengths.push_back(e - p);
    batch.predictions += e - p - 1;
    if (bytes_of)
      for (int64_t t = p + 1; t < e; ++t) {
        const int32_t id = tokens[size_t(t - a)];
        if (!(eos && id == *eos)) batch.target_bytes += int64_t(bytes_of->token_bytes(id).size());
      }
  };
  int64_t p = a;
  for (int64_t s : corpus->starts_between(a, b)) {
    add(p, eos ? s + 1 : s);
    p = s;
  }
  add(p, b);
  ++batch.rows;
}

namespace {
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

Permutation::Permutation(uint64_t n, uint64_t key) : n_(n), key_(key) {
  while (half_bits_ < 31 && (uint64_t(1) << (2 * half_bits_)) < n_) ++half_bits_;
  half_mask_ = (uint64_t(1) << half_bits_) - 1;
}

uint64_t Permutation::encrypt(uint64_t x) const {
  uint64_t L = x >> half_bits_, R = x & half_mask_;
  for (uint64_t r = 0; r < 4; ++r) {
    const uint64_t F = mix64(R ^ (key_ + (r + 1) * 0x9e3779b97f4a7c15ull)) & half_mask_;
    const uint64_t next = L ^ F;
    L = R;
    R = next;
  }
  return (L << half_bits_) | R;
}

uint64_t Permutation::operator()(uint64_t i) const {
  if (i >= n_) fail("[data] permutation index {} out of range [0, {})", i, n_);
  uint64_t x = i;
  do x = encrypt(x);
  while (x >= n_);
  return x;
}

}  // namespace mamba2::training
