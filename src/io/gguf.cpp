#include "io/gguf.h"

#include <bit>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "mamba2/error.h"

namespace mamba2 {
namespace {

using nlohmann::json;

// GGUF's metadata value types.
enum ValueType : uint32_t {
  kU8, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64, kValueTypes
};

// ggml's tensor types that appear in Mamba2 GGUF files and that this reader takes.
enum GgmlType : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ8_0 = 8, kGgmlQ4_K = 12,
                           kGgmlQ5_K = 13, kGgmlQ6_K = 14, kGgmlBF16 = 30 };

// The names of ggml's types for messages (as llama.cpp's gguf tools print them), by number.
const char* ggml_type_name(uint32_t t) {
  static const char* names[] = {"F32",  "F16",  "Q4_0", "Q4_1", "(4)",  "(5)",  "Q5_0", "Q5_1", "Q8_0",
                                "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS",
                                "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
                                "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16"};
  return t < std::size(names) ? names[t] : "unknown";
}

// Bounds-checked little-endian reads over the mapped file.
class Cursor {
 public:
  Cursor(const unsigned char* data, size_t size, std::string where) : p_(data), size_(size), where_(std::move(where)) {}

  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(n));
    pos_ += size_t(n);
    return s;
  }
  void need(uint64_t n, const char* what) const {
    if (n > size_ - pos_)
      fail("{}: the file ends inside {} (at byte {}, {} more bytes needed, {} left)", where_, what, pos_, n,
           size_ - pos_);
  }
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  const std::string& where() const { return where_; }

 private:
  const unsigned char* p_;
  size_t size_, pos_ = 0;
  std::string where_;
};

json read_scalar(Cursor& c, uint32_t type, const char* what) {
  switch (type) {
    case kU8: return c.read<uint8_t>(what);
    case kI8: return c.read<int8_t>(what);
    case kU16: return c.read<uint16_t>(what);
    case kI16: return c.read<int16_t>(what);
    case kU32: return c.read<uint32_t>(what);
    case kI32: return c.read<int32_t>(what);
    case kF32: return c.read<float>(what);
    case kBool: {
      const uint8_t b = c.read<uint8_t>(what);
      if (b > 1) fail("{}: {} is a bool of value {}", c.where(), what, b);
      return b == 1;
    }
    case kString: return c.read_string(what);
    case kU64: return c.read<uint64_t>(what);
    case kI64: return c.read<int64_t>(what);
    case kF64: return c.read<double>(what);
    default: fail("{}: {} has value type {}, not one of GGUF's", c.where(), what, type);
  }
}

json read_value(Cursor& c, uint32_t type, const std::string& key) {
  const std::string what = "the value of " + key;
  if (type != kArray) return read_scalar(c, type, what.c_str());
  const uint32_t elem = c.read<uint32_t>(what.c_str());
  if (elem == kArray) fail("{}: {} is an array of arrays, which Mamba2 files never hold", c.where(), key);
  if (elem >= kValueTypes) fail("{}: {} is an array of value type {}, not one of GGUF's", c.where(), key, elem);
  const uint64_t n = c.read<uint64_t>(what.c_str());
  // Every element takes at least one byte (a string at least its 8-byte length): a corrupt count
  // fails here rather than after reserving its memory.
  if (n > c.left() / (elem == kString ? 8 : 1))
    fail("{}: {} claims {} elements, more than the {} bytes left could hold", c.where(), key, n, c.left());
  json a = json::array();
  a.get_ref<json::array_t&>().reserve(size_t(n));
  for (uint64_t i = 0; i < n; ++i) a.push_back(read_scalar(c, elem, what.c_str()));
  return a;
}

float f16(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// The k-quants, 256 elements per block (ggml's formats; evaluated as ggml's reference
// dequantization and gguf-py's, without fused multiply-adds, so the floats are theirs bit for bit).
// Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes.
void scale_min_k4(int j, const unsigned char* s, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Block: d (f16), dmin (f16), scales[12], qs[128] (two 4-bit values a byte).
void dequantize_q4_k(const unsigned char* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const unsigned char* scales = b + 4;
  const unsigned char* q = b + 16;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
    int sc, m;
    scale_min_k4(is, scales, sc, m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    scale_min_k4(is + 1, scales, sc, m);
    const float d2 = d * float(sc), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
  }
}

// Block: d, dmin, scales[12], qh[32] (the fifth bits), qs[128].
void dequantize_q5_k(const unsigned char* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const unsigned char* scales = b + 4;
  const unsigned char* qh = b + 16;
  const unsigned char* ql = b + 48;
  unsigned u1 = 1, u2 = 2;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
    int sc, m;
    scale_min_k4(is, scales, sc, m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    scale_min_k4(is + 1, scales, sc, m);
    const float d2 = d * float(sc), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l) *y++ = d1 * float((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
  }
}

// Block: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8, one per 16), d (f16);
// element = d·scale·(q − 32).
void dequantize_q6_k(const unsigned char* b, float* y) {
  const unsigned char* ql = b;
  const unsigned char* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16(b + 208);
  for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
  }
}


// What the reader does with each ggml type it takes: the file's own blocks in place (F32, F16, BF16,
// Q8_0, Q4_0), or the k-quants, which no kernel here reads, dequantized to F32 once.
struct TypeInfo {
  const char* name;
  int64_t block;  // elements per block (1: plain)
  size_t bytes;   // bytes per block
  DType dtype;    // as read
  void (*dequantize)(const unsigned char* block, float* out);  // the k-quants' 256 values; else null
};

std::optional<TypeInfo> type_info(uint32_t t) {
  switch (t) {
    case kGgmlF32: return TypeInfo{"F32", 1, sizeof(float), DType::F32, nullptr};
    case kGgmlF16: return TypeInfo{"F16", 1, sizeof(uint16_t), DType::F16, nullptr};
    case kGgmlBF16: return TypeInfo{"BF16", 1, sizeof(uint16_t), DType::BF16, nullptr};
    case kGgmlQ8_0: return TypeInfo{"Q8_0", kQuantBlock, sizeof(Q8Block), DType::Q8_0, nullptr};
    case kGgmlQ4_0: return TypeInfo{"Q4_0", kQuantBlock, sizeof(Q4Block), DType::Q4_0, nullptr};
    case kGgmlQ4_K: return TypeInfo{"Q4_K", 256, 144, DType::F32, dequantize_q4_k};
    case kGgmlQ5_K: return TypeInfo{"Q5_K", 256, 176, DType::F32, dequantize_q5_k};
    case kGgmlQ6_K: return TypeInfo{"Q6_K", 256, 210, DType::F32, dequantize_q6_k};
    default: return std::nullopt;
  }
}

}  // namespace

bool is_gguf(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

GgufFile read_gguf(const std::filesystem::path& path, bool with_tensors) {
  static_assert(std::endian::native == std::endian::little, "GGUF readers assume a little-endian host");
  auto file = std::make_shared<MappedFile>(path);
  const std::string where = "[gguf] " + path.string();
  Cursor c(file->data(), file->size(), where);

  const uint32_t magic = c.read<uint32_t>("the magic");
  if (std::memcmp(&magic, "GGUF", 4) != 0) fail("{}: not a GGUF file (it does not begin with \"GGUF\")", where);
  GgufFile g;
  g.version = c.read<uint32_t>("the version");
  if (g.version == 1) fail("{}: GGUF version 1 (32-bit counts) is not supported: convert it again", where);
  if (g.version != 2 && g.version != 3) {
    if (__builtin_bswap32(g.version) <= 3) fail("{}: a big-endian GGUF file; only little-endian ones are read", where);
    fail("{}: GGUF version {} is not supported (2 and 3 are)", where, g.version);
  }
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the key/value count");
  // A key/value takes at least 13 bytes and a tensor info 28: corrupt counts fail before any loop.
  if (n_kv > c.left() / 13) fail("{}: {} key/values cannot fit in the file's {} bytes", where, n_kv, file->size());
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("a metadata key");
    const uint32_t type = c.read<uint32_t>("a metadata value type");
    if (g.metadata.contains(key)) fail("{}: metadata key {} appears twice", where, key);
    g.metadata[key] = read_value(c, type, key);
  }

  uint64_t alignment = 32;
  if (auto a = g.metadata.find("general.alignment"); a != g.metadata.end()) {
    if (!a->is_number_unsigned() || a->get<uint64_t>() == 0 || !std::has_single_bit(a->get<uint64_t>()))
      fail("{}: general.alignment is {}, not a power of two", where, a->dump());
    alignment = a->get<uint64_t>();
  }

  struct Info {
    std::string name;
    std::vector<int64_t> shape;
    uint32_t type;
    uint64_t offset, nbytes;
  };
  if (n_tensors > c.left() / 28)
    fail("{}: {} tensors cannot fit in the file's {} bytes", where, n_tensors, file->size());
  std::vector<Info> infos;
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info t;
    t.name = c.read_string("a tensor name");
    if (!names.insert(t.name).second) fail("{}: tensor {} appears twice", where, t.name);
    const uint32_t n_dims = c.read<uint32_t>("a tensor's dimension count");
    if (n_dims < 1 || n_dims > 4) fail("{}: tensor {} has {} dimensions (GGUF allows 1 to 4)", where, t.name, n_dims);
    std::vector<int64_t> ne(n_dims);
    uint64_t numel = 1;
    for (auto& d : ne) {
      const uint64_t v = c.read<uint64_t>("a tensor's dimensions");
      if (v < 1 || v > (uint64_t(1) << 40) || numel > (uint64_t(1) << 48) / v)
        fail("{}: tensor {} has a dimension of {} (or more than 2^48 elements)", where, t.name, v);
      d = int64_t(v);
      numel *= v;
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    t.type = c.read<uint32_t>("a tensor's type");
    t.offset = c.read<uint64_t>("a tensor's offset");
    const auto info = type_info(t.type);
    ++g.stored_types[info ? info->name : ggml_type_name(t.type)];
    if (!with_tensors) continue;  // types this reader cannot read are only counted
    if (!info)
      fail("{}: tensor {} is of ggml type {} ({}), which mamba2 does not read (it reads F32, F16, BF16, Q8_0, "
           "Q4_0, Q4_K, Q5_K and Q6_K)",
           where, t.name, ggml_type_name(t.type), t.type);
    if (ne[0] % info->block != 0)
      fail("{}: tensor {} is {} with rows of {} elements, not whole blocks of {}", where, t.name, info->name, ne[0],
           info->block);
    t.nbytes = numel / uint64_t(info->block) * info->bytes;
    if (t.offset % alignment != 0)
      fail("{}: tensor {} is at offset {}, not a multiple of the alignment {}", where, t.name, t.offset, alignment);
    infos.push_back(std::move(t));
  }
  if (!with_tensors) return g;
  const uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  if (data_start > file->size() && !infos.empty())
    fail("{}: the file ends before its data section (byte {})", where, data_start);
  const uint64_t data_size = data_start <= file->size() ? file->size() - data_start : 0;

  for (const Info& t : infos) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: tensor {} ({} bytes at data offset {}) runs past the end of the file ({} data bytes)", where, t.name,
           t.nbytes, t.offset, data_size);
    StoredTensor s;
    s.name = t.name;
    s.shape = t.shape;
    s.file = path.string();
    const unsigned char* bytes = file->data() + data_start + t.offset;
    const TypeInfo info = *type_info(t.type);
    s.dtype = info.dtype;
    if (info.dequantize) {
      const size_t numel = size_t(s.numel());
      auto buf = std::shared_ptr<float[]>(new float[numel]);
      for (size_t b = 0; b < numel / size_t(info.block); ++b)
        info.dequantize(bytes + b * info.bytes, buf.get() + b * size_t(info.block));
      s.data = reinterpret_cast<const unsigned char*>(buf.get());
      s.nbytes = numel * sizeof(float);
      g.tensors.keep_alive(std::move(buf));
    } else {
      s.nbytes = t.nbytes;
      // Used in place when aligned for its element (an alignment below 4 allows offsets that
      // are not), else copied.
      const size_t natural = s.dtype == DType::F32 ? 4 : 2;
      if (reinterpret_cast<uintptr_t>(bytes) % natural == 0) {
        s.data = bytes;
      } else {
        auto buf = std::shared_ptr<float[]>(new float[(t.nbytes + 3) / 4]);
        std::memcpy(buf.get(), bytes, t.nbytes);
        s.data = reinterpret_cast<const unsigned char*>(buf.get());
        g.tensors.keep_alive(std::move(buf));
      }
    }
    g.tensors.add(std::move(s));
  }
  g.tensors.keep_alive(file);
  return g;
}

}  // namespace mamba2
