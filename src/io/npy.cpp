#include "io/npy.h"

#include <cctype>
#include <cstring>
#include <string>

#include "io/atomic_file.h"
#include "io/tensor_archive.h"
#include "mamba2/error.h"

namespace mamba2 {
namespace {

constexpr unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

// The header is a Python dict literal; this reads exactly the three keys NumPy writes.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& file) : s_(text), file_(file) {}

  void parse(std::string& descr, bool& fortran, std::vector<int64_t>& shape, bool& has_shape) {
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = read_string();
      expect(':');
      skip_ws();
      if (key == "descr") {
        descr = read_string();
      } else if (key == "fortran_order") {
        fortran = read_bool();
      } else if (key == "shape") {
        shape = read_shape();
        has_shape = true;
      } else {
        bad("unexpected key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_ws();
      if (peek() != '}') bad("expected ',' or '}'");
    }
  }

 private:
  [[noreturn]] void bad(const std::string& what) {
    fail("[npy] {}: malformed header at byte {}: {}", file_, pos_, what);
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) bad(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string read_string() {
    skip_ws();
    const char q = peek();
    if (q != '\'' && q != '"') bad("expected a string");
    const size_t end = s_.find(q, pos_ + 1);
    if (end == std::string_view::npos) bad("unterminated string");
    std::string out(s_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return out;
  }
  bool read_bool() {
    if (s_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    bad("expected True or False");
  }
  std::vector<int64_t> read_shape() {
    expect('(');
    std::vector<int64_t> shape;
    while (true) {
      skip_ws();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek()))) bad("expected a dimension");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (__builtin_mul_overflow(v, int64_t(10), &v) || __builtin_add_overflow(v, int64_t(peek() - '0'), &v))
          bad("dimension overflows");
        ++pos_;
      }
      // Python long literals may carry an 'L' suffix in old files.
      if (peek() == 'L') ++pos_;
      shape.push_back(v);
      skip_ws();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() != ')') {
        bad("expected ',' or ')'");
      }
    }
    ++pos_;
    return shape;
  }

  std::string_view s_;
  const std::string& file_;
  size_t pos_ = 0;
};

}  // namespace

void write_npy(const std::filesystem::path& path, const float* data, const std::vector<int64_t>& shape) {
  const std::string fname = path.string();
  uint64_t numel = 1;
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0 || __builtin_mul_overflow(numel, uint64_t(shape[i]), &numel))
      fail("[npy] {}: invalid shape", fname);
    dims += (i ? ", " : "") + std::to_string(shape[i]);
  }
  if (shape.size() == 1) dims += ',';  // Python's one-element tuple
  if (numel > 0 && !data) fail("[npy] {}: no data", fname);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic (6) + version (2) + length (2) + header, newline-terminated, padded to 64 bytes.
  const size_t total = (10 + header.size() + 1 + 63) / 64 * 64;
  header.resize(total - 10 - 1, ' ');
  header += '\n';
  if (header.size() > 0xffff) fail("[npy] {}: header too long for format 1.0", fname);

  AtomicFile out(path, "[npy]");
  out.write(kMagic, 6);
  const unsigned char ver_len[4] = {1, 0, uint8_t(header.size() & 0xff), uint8_t(header.size() >> 8)};
  out.write(ver_len, 4);
  out.write(header.data(), header.size());
  if (numel > 0) out.write(data, size_t(numel) * 4);
  out.commit();
}

NpyArray read_npy(const std::filesystem::path& path) {
  const std::string fname = path.string();
  MappedFile file(path);
  const unsigned char* p = file.data();
  const size_t size = file.size();
  if (size < 10 || std::memcmp(p, kMagic, 6) != 0) fail("[npy] {}: not a .npy file (bad magic)", fname);
  const int major = p[6];
  size_t header_len = 0;
  size_t header_start = 0;
  if (major == 1) {
    header_len = size_t(p[8]) | size_t(p[9]) << 8;
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) fail("[npy] {}: truncated header", fname);
    header_len = size_t(p[8]) | size_t(p[9]) << 8 | size_t(p[10]) << 16 | size_t(p[11]) << 24;
    header_start = 12;
  } else {
    fail("[npy] {}: unsupported format version {}.{}", fname, major, int(p[7]));
  }
  if (header_len > size - header_start)
    fail("[npy] {}: header length {} exceeds the file size {}", fname, header_len, size);

  std::string descr;
  bool fortran = false;
  bool has_shape = false;
  NpyArray arr;
  HeaderParser(std::string_view(reinterpret_cast<const char*>(p + header_start), header_len), fname)
      .parse(descr, fortran, arr.shape, has_shape);
  if (!has_shape || descr.empty()) fail("[npy] {}: header lacks 'descr' or 'shape'", fname);
  if (fortran) fail("[npy] {}: fortran_order arrays are not supported", fname);
  size_t elem = 0;
  if (descr == "<f4") {
    elem = 4;
  } else if (descr == "<f8") {
    elem = 8;
  } else {
    fail("[npy] {}: unsupported dtype '{}' ('<f4' and '<f8' are supported)", fname, descr);
  }
  uint64_t numel = 1;
  for (int64_t d : arr.shape) {
    if (__builtin_mul_overflow(numel, uint64_t(d), &numel)) fail("[npy] {}: shape overflows", fname);
  }
  const size_t data_start = header_start + header_len;
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, uint64_t(elem), &nbytes) || nbytes != size - data_start)
    fail("[npy] {}: data section is {} bytes but shape and dtype '{}' need {} elements", fname, size - data_start,
         descr, numel);
  arr.data.resize(size_t(numel));
  const unsigned char* src = p + data_start;
  for (size_t i = 0; i < arr.data.size(); ++i) {
    if (elem == 4) {
      float f;
      std::memcpy(&f, src + 4 * i, 4);
      arr.data[i] = f;
    } else {
      std::memcpy(&arr.data[i], src + 8 * i, 8);
    }
  }
  return arr;
}

}  // namespace mamba2
