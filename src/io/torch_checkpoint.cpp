#include "io/torch_checkpoint.h"

#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <unordered_map>

#include "mamba2/error.h"

namespace mamba2 {
namespace {

// ---------------------------------------------------------------------------------------------
// Zip (stored entries only, so the storages can be used in place from the mapping).

bool in_bounds(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

uint64_t read_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct ZipEntry {
  const unsigned char* data = nullptr;
  uint64_t compressed = 0;
  uint64_t uncompressed = 0;
  uint16_t method = 0;
  uint16_t flags = 0;
};

class ZipReader {
 public:
  explicit ZipReader(const MappedFile& file) : p_(file.data()), size_(file.size()), fname_(file.path().string()) {
    if (size_ < 4 || std::memcmp(p_, "PK\x03\x04", 4) != 0)
      fail("[torch] {}: legacy torch serialization is not supported; re-save with torch.save(..., "
           "_use_new_zipfile_serialization=True)",
           fname_);
    read_central_directory();
  }

  const std::map<std::string, ZipEntry>& entries() const { return entries_; }

  // The bytes of a stored entry, or nullptr if absent.
  const ZipEntry* stored(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) return nullptr;
    const ZipEntry& e = it->second;
    if (e.flags & 1) fail("[torch] {}: zip entry '{}' is encrypted", fname_, name);
    if (e.method != 0)
      fail("[torch] {}: zip entry '{}' is compressed (method {}); only stored entries are supported", fname_, name,
           e.method);
    if (e.compressed != e.uncompressed)
      fail("[torch] {}: zip entry '{}' is stored but its sizes differ ({} vs {})", fname_, name, e.compressed,
           e.uncompressed);
    return &e;
  }

 private:
  uint64_t u(uint64_t off, int n) const {
    if (!in_bounds(off, uint64_t(n), size_)) fail("[torch] {}: zip structure runs past the end of the file", fname_);
    return read_le(p_ + off, n);
  }

  void read_central_directory() {
    if (size_ < 22) fail("[torch] {}: zip end of central directory not found (file truncated?)", fname_);
    // The EOCD record sits at the end, followed only by a comment of at most 64 KiB.
    const uint64_t last = size_ - 22;
    const uint64_t first = last > 0xffff ? last - 0xffff : 0;
    std::optional<uint64_t> eocd;
    for (uint64_t pos = last + 1; pos-- > first;) {
      if (read_le(p_ + pos, 4) == 0x06054b50 && pos + 22 + read_le(p_ + pos + 20, 2) <= size_) {
        eocd = pos;
        break;
      }
    }
    if (!eocd) fail("[torch] {}: zip end of central directory not found (file truncated?)", fname_);
    uint64_t count = u(*eocd + 10, 2);
    uint64_t cd_size = u(*eocd + 12, 4);
    uint64_t cd_off = u(*eocd + 16, 4);
    if (*eocd >= 20 && u(*eocd - 20, 4) == 0x07064b50) {
      const uint64_t rec = u(*eocd - 20 + 8, 8);
      if (!in_bounds(rec, 56, size_) || u(rec, 4) != 0x06064b50) fail("[torch] {}: bad ZIP64 end of central directory record", fname_);
      count = u(rec + 32, 8);
      cd_size = u(rec + 40, 8);
      cd_off = u(rec + 48, 8);
    } else if (count == 0xffff || cd_size == 0xffffffff || cd_off == 0xffffffff) {
      fail("[torch] {}: zip needs ZIP64 but its locator is missing", fname_);
    }
    if (!in_bounds(cd_off, cd_size, size_))
      fail("[torch] {}: zip central directory [{}, +{}) lies outside the file", fname_, cd_off, cd_size);
    if (count > cd_size / 46) fail("[torch] {}: zip central directory too small for {} entries", fname_, count);

    const uint64_t end = cd_off + cd_size;
    uint64_t off = cd_off;
    for (uint64_t i = 0; i < count; ++i) {
      if (!in_bounds(off, 46, end) || read_le(p_ + off, 4) != 0x02014b50)
        fail("[torch] {}: zip central directory entry {} is corrupt", fname_, i);
      ZipEntry e;
      e.flags = uint16_t(read_le(p_ + off + 8, 2));
      e.method = uint16_t(read_le(p_ + off + 10, 2));
      e.compressed = read_le(p_ + off + 20, 4);
      e.uncompressed = read_le(p_ + off + 24, 4);
      const uint64_t name_len = read_le(p_ + off + 28, 2);
      const uint64_t extra_len = read_le(p_ + off + 30, 2);
      const uint64_t comment_len = read_le(p_ + off + 32, 2);
      uint64_t local = read_le(p_ + off + 42, 4);
      if (!in_bounds(off + 46, name_len + extra_len + comment_len, end))
        fail("[torch] {}: zip central directory entry {} is corrupt", fname_, i);
      std::string name(reinterpret_cast<const char*>(p_ + off + 46), name_len);
      read_zip64_extra(off + 46 + name_len, extra_len, name, e, local);

      if (!in_bounds(local, 30, size_) || read_le(p_ + local, 4) != 0x04034b50)
        fail("[torch] {}: zip local header of '{}' is corrupt", fname_, name);
      // The local name/extra lengths may differ from the central ones (torch pads with extras).
      const uint64_t data_off = local + 30 + read_le(p_ + local + 26, 2) + read_le(p_ + local + 28, 2);
      if (!in_bounds(data_off, e.compressed, size_))
        fail("[torch] {}: zip entry '{}' ({} bytes) runs past the end of the file", fname_, name, e.compressed);
      e.data = p_ + data_off;
      if (!entries_.emplace(name, e).second) fail("[torch] {}: zip entry '{}' appears twice", fname_, name);
      off += 46 + name_len + extra_len + comment_len;
    }
  }

  // A ZIP64 extra field holds, in order, only the values whose 32-bit fields are saturated.
  void read_zip64_extra(uint64_t off, uint64_t len, const std::string& name, ZipEntry& e, uint64_t& local) {
    const uint64_t end = off + len;
    while (off + 4 <= end) {
      const uint64_t id = read_le(p_ + off, 2);
      const uint64_t n = read_le(p_ + off + 2, 2);
      if (!in_bounds(off + 4, n, end)) fail("[torch] {}: zip extra field of '{}' is corrupt", fname_, name);
      if (id == 1) {
        uint64_t q = off + 4;
        for (uint64_t* field : {&e.uncompressed, &e.compressed, &local}) {
          if (*field != 0xffffffff) continue;
          if (q + 8 > off + 4 + n) fail("[torch] {}: zip64 extra field of '{}' is too short", fname_, name);
          *field = read_le(p_ + q, 8);
          q += 8;
        }
      }
      off += 4 + n;
    }
  }

  const unsigned char* p_;
  uint64_t size_;
  std::string fname_;
  std::map<std::string, ZipEntry> entries_;
};

// ---------------------------------------------------------------------------------------------
// Pickle: interpreted by a VM that only builds data; callables are an allow-list resolved by
// name, and nothing the pickle names is ever executed.

enum class Kind { None, Bool, Int, BigInt, Float, Str, Bytes, Tuple, List, Dict, Set, Global, Storage, Tensor };

enum class Callable { None, OrderedDict, RebuildTensorV2, RebuildParameter, RebuildParameterWithState, StorageType, DTypeObj };

struct Value {
  Kind kind = Kind::None;
  int64_t i = 0;
  double f = 0;
  std::string s;                                  // Str, Bytes; Global: "module.name"
  std::vector<Value*> items;                      // Tuple, List, Set
  std::vector<std::pair<Value*, Value*>> dict;    // Dict, in insertion order
  Callable callable = Callable::None;             // Global
  std::optional<DType> dtype;                     // Global storage type, Storage; unset: unsupported
  const char* dtype_label = "";                   // "LongStorage", for messages
  size_t elem_size = 0;                           // Global storage type, Storage
  const unsigned char* data = nullptr;            // Storage
  uint64_t numel = 0;                             // Storage
  Value* storage = nullptr;                       // Tensor
  std::vector<int64_t> size, stride;              // Tensor; i holds the storage offset
};

struct StorageTypeInfo {
  const char* name;
  std::optional<DType> dtype;
  size_t elem_size;
};

// Storage classes torch.save names. Only three dtypes are loadable; the others are accepted as
// inert names so that a stray integer buffer fails with a message naming it.
constexpr StorageTypeInfo kStorageTypes[] = {
    {"FloatStorage", DType::F32, 4},  {"HalfStorage", DType::F16, 2},  {"BFloat16Storage", DType::BF16, 2},
    {"DoubleStorage", std::nullopt, 8}, {"LongStorage", std::nullopt, 8}, {"IntStorage", std::nullopt, 4},
    {"ShortStorage", std::nullopt, 2}, {"CharStorage", std::nullopt, 1}, {"ByteStorage", std::nullopt, 1},
    {"BoolStorage", std::nullopt, 1},
};

// Real state dicts stay far below these (the pickler batches SETITEMS by 1000); the caps bound
// the memory a crafted data.pkl can claim.
constexpr size_t kMaxStack = 1 << 16;
constexpr size_t kMaxMemo = 1 << 20;
constexpr size_t kMaxValues = 1 << 20;

class PickleVm {
 public:
  PickleVm(const unsigned char* p, size_t n, const std::string& fname, const ZipReader& zip, std::string prefix)
      : p_(p), n_(n), fname_(fname), zip_(zip), prefix_(std::move(prefix)) {}

  Value* run() {
    while (true) {
      const size_t at = pos_;
      const uint8_t op = take(1)[0];
      switch (op) {
        case 0x80: {  // PROTO
          const uint8_t v = take(1)[0];
          if (v > 5) fail("[torch] {}: unsupported pickle protocol {}", fname_, v);
          break;
        }
        case 0x95: take(8); break;  // FRAME: only a read-ahead hint
        case '}': push(make(Kind::Dict)); break;
        case ']': push(make(Kind::List)); break;
        case ')': push(make(Kind::Tuple)); break;
        case 0x8f: push(make(Kind::Set)); break;
        case '(':
          if (marks_.size() >= kMaxStack) fail("[torch] {}: pickle has too many marks", fname_);
          marks_.push_back(stack_.size());
          break;
        case 't': {
          Value* t = make(Kind::Tuple);
          t->items = pop_mark();
          push(t);
          break;
        }
        case 0x91: {  // FROZENSET
          Value* t = make(Kind::Set);
          t->items = pop_mark();
          push(t);
          break;
        }
        case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
          const size_t k = op - 0x84;
          need(k);
          Value* t = make(Kind::Tuple);
          t->items.assign(stack_.end() - k, stack_.end());
          stack_.resize(stack_.size() - k);
          push(t);
          break;
        }
        case 'X': push_str(Kind::Str, read_le(take(4), 4)); break;
        case 0x8c: push_str(Kind::Str, take(1)[0]); break;
        case 0x8d: push_str(Kind::Str, read_le(take(8), 8)); break;
        case 'U': push_str(Kind::Bytes, take(1)[0]); break;
        case 'T': {
          const int32_t len = int32_t(read_le(take(4), 4));
          if (len < 0) fail("[torch] {}: negative string length in pickle at byte {}", fname_, at);
          push_str(Kind::Bytes, uint64_t(len));
          break;
        }
        case 'C': push_str(Kind::Bytes, take(1)[0]); break;
        case 'B': push_str(Kind::Bytes, read_le(take(4), 4)); break;
        case 0x8e: push_str(Kind::Bytes, read_le(take(8), 8)); break;
        case 'J': push_int(int32_t(read_le(take(4), 4))); break;
        case 'K': push_int(take(1)[0]); break;
        case 'M': push_int(int64_t(read_le(take(2), 2))); break;
        case 0x8a: case 0x8b: {  // LONG1, LONG4
          const uint64_t len = op == 0x8a ? take(1)[0] : read_le(take(4), 4);
          const unsigned char* b = take(len);
          if (len > 8) {  // only metadata (e.g. a step counter) needs more than 64 bits
            push(make(Kind::BigInt));
            break;
          }
          uint64_t v = read_le(b, int(len));
          if (len > 0 && len < 8 && (b[len - 1] & 0x80)) v |= ~uint64_t(0) << (8 * len);
          push_int(int64_t(v));
          break;
        }
        case 'N': push(make(Kind::None)); break;
        case 0x88: case 0x89: {
          Value* v = make(Kind::Bool);
          v->i = op == 0x88;
          push(v);
          break;
        }
        case 'G': {
          const unsigned char* b = take(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | b[k];
          Value* v = make(Kind::Float);
          std::memcpy(&v->f, &bits, 8);
          push(v);
          break;
        }
        case 'q': memo_put(take(1)[0]); break;
        case 'r': memo_put(read_le(take(4), 4)); break;
        case 0x94: memo_put(memo_.size()); break;
        case 'h': push(memo_get(take(1)[0])); break;
        case 'j': push(memo_get(read_le(take(4), 4))); break;
        case 'c': {
          const std::string module = take_line();
          const std::string name = take_line();
          push(resolve(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          Value* name = pop();
          Value* module = pop();
          if (module->kind != Kind::Str || name->kind != Kind::Str)
            fail("[torch] {}: STACK_GLOBAL needs two strings (pickle byte {})", fname_, at);
          push(resolve(module->s, name->s));
          break;
        }
        case 'R': case 0x81: {  // REDUCE, NEWOBJ
          Value* args = pop();
          Value* fn = pop();
          push(call(fn, args));
          break;
        }
        case 'b': pop(); need(1); break;  // BUILD: state (e.g. OrderedDict._metadata) is ignored
        case 's': {
          Value* v = pop();
          Value* k = pop();
          target(Kind::Dict, "SETITEM")->dict.emplace_back(k, v);
          break;
        }
        case 'u': {
          auto items = pop_mark();
          if (items.size() % 2) fail("[torch] {}: SETITEMS with an odd number of items", fname_);
          Value* d = target(Kind::Dict, "SETITEMS");
          for (size_t k = 0; k < items.size(); k += 2) d->dict.emplace_back(items[k], items[k + 1]);
          break;
        }
        case 'a': {
          Value* v = pop();
          target(Kind::List, "APPEND")->items.push_back(v);
          break;
        }
        case 'e': {
          auto items = pop_mark();
          Value* l = target(Kind::List, "APPENDS");
          l->items.insert(l->items.end(), items.begin(), items.end());
          break;
        }
        case 0x90: {  // ADDITEMS
          auto items = pop_mark();
          Value* s = target(Kind::Set, "ADDITEMS");
          s->items.insert(s->items.end(), items.begin(), items.end());
          break;
        }
        case 'Q': push(persistent_load(pop())); break;
        case '0': pop(); break;        // POP
        case '1': pop_mark(); break;   // POP_MARK
        case '2': {                    // DUP
          need(1);
          push(stack_.back());
          break;
        }
        case '.': {
          Value* v = pop();
          return v;
        }
        default:
          fail("[torch] {}: unsupported pickle opcode 0x{:02x} at byte {}", fname_, op, at);
      }
    }
  }

 private:
  const unsigned char* take(uint64_t k) {
    if (k > n_ - pos_) fail("[torch] {}: data.pkl ends unexpectedly at byte {}", fname_, pos_);
    const unsigned char* r = p_ + pos_;
    pos_ += size_t(k);
    return r;
  }
  std::string take_line() {
    const void* nl = std::memchr(p_ + pos_, '\n', n_ - pos_);
    if (!nl) fail("[torch] {}: data.pkl ends inside a GLOBAL name", fname_);
    const size_t len = static_cast<const unsigned char*>(nl) - (p_ + pos_);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len + 1;
    return s;
  }
  Value* make(Kind k) {
    if (arena_.size() >= kMaxValues) fail("[torch] {}: pickle creates more than {} objects", fname_, kMaxValues);
    arena_.emplace_back();
    arena_.back().kind = k;
    return &arena_.back();
  }
  void push(Value* v) {
    if (stack_.size() >= kMaxStack) fail("[torch] {}: pickle stack exceeds {} items", fname_, kMaxStack);
    stack_.push_back(v);
  }
  void push_int(int64_t x) {
    Value* v = make(Kind::Int);
    v->i = x;
    push(v);
  }
  void push_str(Kind k, uint64_t len) {
    const unsigned char* b = take(len);
    Value* v = make(k);
    v->s.assign(reinterpret_cast<const char*>(b), size_t(len));
    push(v);
  }
  // Items above the newest mark are not visible to plain pops.
  void need(size_t k) {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() - floor < k) fail("[torch] {}: pickle stack underflow at byte {}", fname_, pos_);
  }
  Value* pop() {
    need(1);
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) fail("[torch] {}: pickle uses a MARK that was never set (byte {})", fname_, pos_);
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + m, stack_.end());
    stack_.resize(m);
    return items;
  }
  Value* target(Kind k, const char* op) {
    need(1);
    Value* t = stack_.back();
    if (t->kind != k) fail("[torch] {}: pickle {} on an object of the wrong type", fname_, op);
    return t;
  }
  void memo_put(uint64_t idx) {
    need(1);
    if (memo_.size() >= kMaxMemo && !memo_.count(idx)) fail("[torch] {}: pickle memo exceeds {} entries", fname_, kMaxMemo);
    memo_[idx] = stack_.back();
  }
  Value* memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail("[torch] {}: pickle reads memo entry {} that was never stored", fname_, idx);
    return it->second;
  }

  Value* resolve(const std::string& module, const std::string& name) {
    Value* g = make(Kind::Global);
    g->s = module + "." + name;
    if (module == "collections" && name == "OrderedDict") {
      g->callable = Callable::OrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      g->callable = Callable::RebuildTensorV2;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      g->callable = Callable::RebuildParameter;
    } else if (module == "torch._utils" && name == "_rebuild_parameter_with_state") {
      g->callable = Callable::RebuildParameterWithState;
    } else if (module == "torch" && (name == "float32" || name == "float16" || name == "bfloat16")) {
      g->callable = Callable::DTypeObj;
    } else if (module == "torch") {
      for (const auto& st : kStorageTypes) {
        if (name == st.name) {
          g->callable = Callable::StorageType;
          g->dtype = st.dtype;
          g->dtype_label = st.name;
          g->elem_size = st.elem_size;
        }
      }
    }
    if (g->callable == Callable::None) fail("[torch] {}: pickle refers to forbidden global '{}'", fname_, g->s);
    return g;
  }

  Value* call(Value* fn, Value* args) {
    if (fn->kind != Kind::Global || args->kind != Kind::Tuple)
      fail("[torch] {}: pickle calls something that is not an allowed function", fname_);
    const auto& a = args->items;
    switch (fn->callable) {
      case Callable::OrderedDict:
        if (!a.empty()) break;
        return make(Kind::Dict);
      case Callable::RebuildTensorV2:
        if (a.size() != 6 && a.size() != 7) break;
        return rebuild_tensor(a);
      case Callable::RebuildParameter:
      case Callable::RebuildParameterWithState:
        if (a.size() < 3 || a[0]->kind != Kind::Tensor) break;
        return a[0];
      default:
        break;
    }
    fail("[torch] {}: pickle calls '{}' with unexpected arguments", fname_, fn->s);
  }

  std::vector<int64_t> int_tuple(Value* v, const char* what) {
    if (v->kind != Kind::Tuple) fail("[torch] {}: tensor {} is not a tuple", fname_, what);
    std::vector<int64_t> out;
    for (Value* x : v->items) {
      if (x->kind != Kind::Int || x->i < 0) fail("[torch] {}: tensor {} holds an invalid value", fname_, what);
      out.push_back(x->i);
    }
    return out;
  }

  Value* rebuild_tensor(const std::vector<Value*>& a) {
    if (a[0]->kind != Kind::Storage || a[1]->kind != Kind::Int || a[1]->i < 0)
      fail("[torch] {}: _rebuild_tensor_v2 needs a storage and a non-negative offset", fname_);
    Value* t = make(Kind::Tensor);
    t->storage = a[0];
    t->i = a[1]->i;
    t->size = int_tuple(a[2], "size");
    t->stride = int_tuple(a[3], "stride");
    if (t->size.size() != t->stride.size()) fail("[torch] {}: tensor size and stride differ in rank", fname_);
    return t;
  }

  // ('storage', storage_type, key, location, numel) → the storage bytes in the archive.
  Value* persistent_load(Value* pid) {
    const auto& a = pid->items;
    if (pid->kind != Kind::Tuple || a.size() != 5 || a[0]->kind != Kind::Str || a[0]->s != "storage" ||
        a[1]->kind != Kind::Global || a[1]->callable != Callable::StorageType || a[2]->kind != Kind::Str ||
        a[4]->kind != Kind::Int || a[4]->i < 0)
      fail("[torch] {}: pickle has an unexpected persistent id", fname_);
    Value* s = make(Kind::Storage);
    s->dtype = a[1]->dtype;
    s->dtype_label = a[1]->dtype_label;
    s->elem_size = a[1]->elem_size;
    s->numel = uint64_t(a[4]->i);
    const std::string entry = prefix_ + "data/" + a[2]->s;
    const ZipEntry* e = zip_.stored(entry);
    if (!e) fail("[torch] {}: storage '{}' is missing from the archive", fname_, entry);
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(s->numel, uint64_t(s->elem_size), &bytes) || bytes > e->compressed)
      fail("[torch] {}: storage '{}' holds {} bytes, fewer than its {} elements need", fname_, entry, e->compressed,
           s->numel);
    s->data = e->data;
    return s;
  }

  const unsigned char* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& fname_;
  const ZipReader& zip_;
  std::string prefix_;
  std::deque<Value> arena_;  // owns every value, so cyclic references cannot leak
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
};

// Turns a rebuilt tensor into a StoredTensor; views that are not contiguous are copied.
StoredTensor materialize(const std::string& name, const Value& t, const std::string& fname, uint64_t file_size,
                         TensorArchive& archive) {
  const Value& s = *t.storage;
  if (!s.dtype) fail("[torch] {}: tensor '{}' has unsupported dtype {}", fname, name, s.dtype_label);
  StoredTensor out;
  out.name = name;
  out.file = fname;
  out.dtype = *s.dtype;
  out.shape = t.size;
  const uint64_t elem = s.elem_size;
  uint64_t numel = 1;
  uint64_t last = uint64_t(t.i);  // highest storage element the view touches
  bool contiguous = true;
  uint64_t expected = 1;
  for (size_t d = t.size.size(); d-- > 0;) {
    const uint64_t size = uint64_t(t.size[d]);
    const uint64_t stride = uint64_t(t.stride[d]);
    uint64_t reach = 0;
    if (__builtin_mul_overflow(numel, size, &numel) ||
        (size > 0 && (__builtin_mul_overflow(size - 1, stride, &reach) || __builtin_add_overflow(last, reach, &last))))
      fail("[torch] {}: tensor '{}' has a shape or stride that overflows", fname, name);
    if (size != 1 && stride != expected) contiguous = false;
    expected *= size;
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, elem, &nbytes) || nbytes > file_size)
    fail("[torch] {}: tensor '{}' {} is larger than the file", fname, name, out.shape_str());
  out.nbytes = size_t(nbytes);
  if (numel == 0) {
    out.data = s.data;
    return out;
  }
  if (last >= s.numel)
    fail("[torch] {}: tensor '{}' {} at offset {} reads past its storage of {} elements", fname, name,
         out.shape_str(), t.i, s.numel);
  if (contiguous) {
    out.data = s.data + uint64_t(t.i) * elem;
    return out;
  }
  auto buf = std::make_shared<std::vector<unsigned char>>(out.nbytes);
  const size_t rank = t.size.size();
  std::vector<int64_t> idx(rank, 0);
  for (uint64_t k = 0; k < numel; ++k) {
    uint64_t src = uint64_t(t.i);
    for (size_t d = 0; d < rank; ++d) src += uint64_t(idx[d]) * uint64_t(t.stride[d]);
    std::memcpy(buf->data() + k * elem, s.data + src * elem, elem);
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < t.size[d]) break;
      idx[d] = 0;
    }
  }
  out.data = buf->data();
  archive.keep_alive(buf);
  return out;
}

const Value* find_key(const Value& dict, const char* key) {
  const Value* found = nullptr;
  for (const auto& [k, v] : dict.dict)
    if (k->kind == Kind::Str && k->s == key) found = v;
  return found;
}

}  // namespace

TensorArchive read_torch_checkpoint(const std::filesystem::path& path) {
  auto file = std::make_shared<MappedFile>(path);
  const std::string fname = path.string();
  ZipReader zip(*file);

  std::optional<std::string> prefix;
  for (const auto& [name, e] : zip.entries()) {
    constexpr std::string_view suffix = "data.pkl";
    if (!name.ends_with(suffix)) continue;
    const std::string pre = name.substr(0, name.size() - suffix.size());
    // data.pkl sits at the root or directly inside the one top-level folder.
    if (!pre.empty() && pre.find('/') != pre.size() - 1) continue;
    if (prefix) fail("[torch] {}: archive holds more than one data.pkl", fname);
    prefix = pre;
  }
  if (!prefix) fail("[torch] {}: archive holds no data.pkl; not a torch.save checkpoint", fname);
  if (const ZipEntry* bo = zip.stored(*prefix + "byteorder")) {
    const std::string order(reinterpret_cast<const char*>(bo->data), size_t(bo->compressed));
    if (order != "little") fail("[torch] {}: byteorder is '{}'; only little-endian checkpoints are supported", fname, order);
  }
  const ZipEntry* pkl = zip.stored(*prefix + "data.pkl");

  PickleVm vm(pkl->data, size_t(pkl->compressed), fname, zip, *prefix);
  const Value* root = vm.run();
  if (root->kind != Kind::Dict) fail("[torch] {}: checkpoint is not a dict of tensors", fname);
  for (const char* key : {"state_dict", "model"}) {
    const Value* inner = find_key(*root, key);
    if (inner && inner->kind == Kind::Dict) {
      root = inner;
      break;
    }
  }
  // Later assignments of a key replace earlier ones, as in Python.
  std::map<std::string, const Value*> named;
  for (const auto& [k, v] : root->dict) {
    if (k->kind != Kind::Str) continue;
    if (v->kind == Kind::Tensor) {
      named[k->s] = v;
    } else {
      named.erase(k->s);
    }
  }
  TensorArchive archive;
  for (const auto& [name, v] : named) archive.add(materialize(name, *v, fname, file->size(), archive));
  archive.keep_alive(file);
  return archive;
}

}  // namespace mamba2
