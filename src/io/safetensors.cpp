#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "io/atomic_file.h"
#include "core/json.h"
#include "mamba2/error.h"

namespace mamba2 {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// The format's own limit; also keeps a corrupt length from making us parse gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

bool parse_dtype(const std::string& s, DType& out) {
  for (DType d : {DType::F32, DType::F16, DType::BF16}) {
    if (s == dtype_name(d)) {
      out = d;
      return true;
    }
  }
  return false;
}

// Whether the file's U8 tensors are rows of blocks: its __metadata__ names a block format ("bf16"
// names none: a bf16 `mamba2 quantize` file).
bool holds_blocks(const json& header, const std::string& fname) {
  const auto meta = header.find("__metadata__");
  if (meta == header.end() || !meta->is_object()) return false;
  const auto q = meta->find(kQuantizationKey);
  if (q == meta->end()) return false;
  const std::string format = q->is_string() ? q->get<std::string>() : "";
  if (format == "q8_0" || format == "q4_0") return true;
  if (format == "bf16") return false;
  fail("[safetensors] {}: __metadata__ {} is {}, not \"q8_0\", \"q4_0\" or \"bf16\"", fname, kQuantizationKey,
       q->dump());
}

// Parses the header of a mapped file into tensors pointing into the mapping, and the string
// entries of its __metadata__ into `metadata` when given.
std::vector<StoredTensor> parse_safetensors(const MappedFile& file, std::map<std::string, std::string>* metadata) {
  const std::string fname = file.path().string();
  const size_t size = file.size();
  if (size < 8) fail("[safetensors] {}: file is {} bytes, too short for the header length", fname, size);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file.data()[i];
  if (header_len > size - 8)
    fail("[safetensors] {}: header length {} exceeds the file size {}", fname, header_len, size);
  if (header_len > kMaxHeaderBytes)
    fail("[safetensors] {}: header length {} exceeds the {} byte limit", fname, header_len, kMaxHeaderBytes);

  const char* hdr = reinterpret_cast<const char*>(file.data() + 8);
  const json header = parse_json(std::string_view(hdr, header_len), "[safetensors] " + fname + ": header");
  if (!header.is_object()) fail("[safetensors] {}: header is not a JSON object", fname);

  const bool blocks = holds_blocks(header, fname);
  const unsigned char* data = file.data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<StoredTensor> tensors;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {  // the format says strings; other values are skipped, not refused
      if (metadata && entry.is_object())
        for (const auto& [key, value] : entry.items())
          if (value.is_string()) (*metadata)[key] = value.get<std::string>();
      continue;
    }
    if (!entry.is_object()) fail("[safetensors] {}: tensor '{}': entry is not an object", fname, name);
    auto dt = entry.find("dtype");
    auto sh = entry.find("shape");
    auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string())
      fail("[safetensors] {}: tensor '{}': missing or non-string dtype", fname, name);
    StoredTensor t;
    t.name = name;
    t.file = fname;
    const bool packed = dt->get<std::string>() == "U8" && blocks;  // rows of blocks, see safetensors.h
    if (packed) {
      // The block's size names its format.
      const uint64_t last = sh != entry.end() && sh->is_array() && !sh->empty() && sh->back().is_number_unsigned()
                                ? sh->back().get<uint64_t>() : 0;
      if (last != sizeof(Q8Block) && last != sizeof(Q4Block))
        fail("[safetensors] {}: tensor '{}' of blocks has shape {}: the last dimension must be a block's bytes, 34 "
             "(q8_0) or 18 (q4_0)", fname, name, sh != entry.end() ? sh->dump() : "none");
      t.dtype = last == sizeof(Q8Block) ? DType::Q8_0 : DType::Q4_0;
    } else if (!parse_dtype(dt->get<std::string>(), t.dtype))
      fail("[safetensors] {}: tensor '{}' has unsupported dtype {} (F32, F16, BF16 are supported, and U8 blocks "
           "in a file whose __metadata__ names their format)", fname, name, dt->get<std::string>());
    if (sh == entry.end() || !sh->is_array()) fail("[safetensors] {}: tensor '{}': missing shape", fname, name);
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        fail("[safetensors] {}: tensor '{}': shape {} has an invalid dimension", fname, name, sh->dump());
      uint64_t dim = d.get<uint64_t>();
      if (__builtin_mul_overflow(numel, dim, &numel) || numel > uint64_t(INT64_MAX))
        fail("[safetensors] {}: tensor '{}': shape {} overflows", fname, name, sh->dump());
      t.shape.push_back(int64_t(dim));
    }
    if (off == entry.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail("[safetensors] {}: tensor '{}': data_offsets must be two non-negative integers", fname, name);
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    uint64_t nbytes = numel;
    if (packed) {
      // (..., blocks, block bytes) of bytes is (..., blocks · 32) elements.
      if (t.shape.size() < 2)
        fail("[safetensors] {}: tensor '{}' of {} blocks has shape {}: rows of blocks are (..., k/32, {})", fname,
             name, dtype_name(t.dtype), sh->dump(), dtype_bytes(t.dtype, kQuantBlock));
      if (numel > data_size)
        fail("[safetensors] {}: tensor '{}': shape {} needs more bytes than the data section's {}", fname, name,
             sh->dump(), data_size);
      t.shape.pop_back();
      t.shape.back() *= kQuantBlock;  // blocks · 32 < numel · 2 ≤ the file's size: no overflow
      if (numel > 0 && begin % 2)
        fail("[safetensors] {}: tensor '{}': {} blocks must start at an even offset, not {}", fname, name,
             dtype_name(t.dtype), begin);
    } else if (__builtin_mul_overflow(numel, uint64_t(dtype_size(t.dtype)), &nbytes)) {
      fail("[safetensors] {}: tensor '{}': byte size overflows", fname, name);
    }
    if (begin > end || end > data_size)
      fail("[safetensors] {}: tensor '{}': data_offsets [{}, {}] outside the data section of {} bytes", fname, name,
           begin, end, data_size);
    if (end - begin != nbytes)
      fail("[safetensors] {}: tensor '{}': data_offsets span {} bytes but {} {} needs {}", fname, name, end - begin,
           dt->get<std::string>(), t.shape_str(), nbytes);
    t.data = data + begin;
    t.nbytes = size_t(nbytes);
    ranges.emplace_back(begin, end);
    tensors.push_back(std::move(t));
  }
  // Tensors must not share bytes: overlapping ranges mean a corrupt or crafted header.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  size_t furthest = 0;  // the tensor whose range reaches furthest so far
  for (size_t k = 1; k < order.size(); ++k) {
    const auto& cur = ranges[order[k]];
    if (cur.first == cur.second) continue;
    if (cur.first < ranges[order[furthest]].second)
      fail("[safetensors] {}: tensors '{}' and '{}' have overlapping data_offsets", fname,
           tensors[order[furthest]].name, tensors[order[k]].name);
    furthest = k;
  }
  return tensors;
}

}  // namespace

TensorArchive read_safetensors(const fs::path& path) {
  auto file = std::make_shared<MappedFile>(path);
  TensorArchive archive;
  for (auto& t : parse_safetensors(*file, &archive.metadata)) archive.add(std::move(t));
  archive.keep_alive(file);
  return archive;
}

TensorArchive read_safetensors_index(const fs::path& index_path) {
  const std::string iname = index_path.string();
  json index;
  {
    MappedFile file(index_path);
    const char* p = reinterpret_cast<const char*>(file.data());
    index = parse_json(std::string_view(p, file.size()), "[safetensors] " + iname + ": index");
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail("[safetensors] {}: index has no \"weight_map\" object", iname);

  std::map<std::string, std::vector<std::string>> by_shard;  // shard file → tensor names
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) fail("[safetensors] {}: tensor '{}': shard name is not a string", iname, name);
    const std::string s = shard.get<std::string>();
    // Shards live beside the index; a path could point anywhere on the machine.
    if (s.empty() || s.find('/') != std::string::npos || s == "." || s == "..")
      fail("[safetensors] {}: tensor '{}': shard name '{}' is not a plain file name", iname, name, s);
    by_shard[s].push_back(name);
  }

  TensorArchive archive;
  const fs::path dir = index_path.parent_path();
  for (const auto& [shard, names] : by_shard) {
    const fs::path shard_path = dir / shard;
    std::error_code ec;
    if (!fs::exists(shard_path, ec))
      fail("[safetensors] {}: shard {} named by the index does not exist", iname, shard_path.string());
    auto file = std::make_shared<MappedFile>(shard_path);
    std::map<std::string, StoredTensor> in_shard;
    for (auto& t : parse_safetensors(*file, nullptr)) in_shard.emplace(t.name, std::move(t));
    for (const auto& name : names) {
      auto it = in_shard.find(name);
      if (it == in_shard.end())
        fail("[safetensors] {}: tensor '{}' is not in shard {} where the index places it", iname, name,
             shard_path.string());
      archive.add(std::move(it->second));
    }
    archive.keep_alive(file);
  }
  return archive;
}

void write_safetensors(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string fname = path.string();
  std::vector<const TensorToWrite*> sorted;
  for (const auto& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });

  json header = json::object();
  std::map<std::string, std::string> meta = metadata;
  // The file's nominal format: the narrowest of its block formats.
  const auto has = [&](DType d) { return std::any_of(tensors.begin(), tensors.end(), [&](auto& t) { return t.dtype == d; }); };
  if (has(DType::Q4_0)) meta[kQuantizationKey] = "q4_0";
  else if (has(DType::Q8_0)) meta[kQuantizationKey] = "q8_0";
  if (!meta.empty()) header["__metadata__"] = meta;
  uint64_t offset = 0;
  std::vector<uint64_t> counts;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const auto& t = *sorted[i];
    if (t.name.empty() || t.name == "__metadata__")
      fail("[safetensors] {}: invalid tensor name '{}'", fname, t.name);
    if (i > 0 && sorted[i - 1]->name == t.name) fail("[safetensors] {}: tensor '{}' given twice", fname, t.name);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(numel, uint64_t(d), &numel))
        fail("[safetensors] {}: tensor '{}' has an invalid shape", fname, t.name);
    }
    if (numel > 0 && !t.data) fail("[safetensors] {}: tensor '{}' has no data", fname, t.name);
    uint64_t nbytes = 0;
    std::vector<int64_t> shape = t.shape;
    std::string_view dtype = dtype_name(t.dtype);
    if (is_quantized(t.dtype)) {
      if (shape.empty() || shape.back() % kQuantBlock)
        fail("[safetensors] {}: tensor '{}': {} needs rows of a multiple of 32", fname, t.name, dtype);
      shape.back() /= kQuantBlock;
      shape.push_back(int64_t(dtype_bytes(t.dtype, kQuantBlock)));
      dtype = "U8";
      nbytes = dtype_bytes(t.dtype, numel);
    } else if (__builtin_mul_overflow(numel, uint64_t(dtype_size(t.dtype)), &nbytes)) {
      fail("[safetensors] {}: tensor '{}' is too large", fname, t.name);
    }
    if (offset + nbytes < offset) fail("[safetensors] {}: tensor '{}' is too large", fname, t.name);
    header[t.name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    counts.push_back(numel);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    fail("[safetensors] {}: cannot encode the header: {}", fname, e.what());
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');  // keeps the data section 8-byte aligned

  AtomicFile out(path, "[safetensors]");
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
  out.write(len, 8);
  out.write(text.data(), text.size());
  constexpr size_t kChunk = 1 << 16;
  std::vector<unsigned char> buf(kChunk * 4);
  for (size_t i = 0; i < sorted.size(); ++i) {
    const auto& t = *sorted[i];
    for (uint64_t done = 0; done < counts[i]; done += kChunk) {
      const size_t n = size_t(std::min<uint64_t>(kChunk, counts[i] - done));
      convert_from_f32(t.dtype, t.data + done, buf.data(), n);
      out.write(buf.data(), dtype_bytes(t.dtype, n));
    }
  }
  out.commit();
}

}  // namespace mamba2
