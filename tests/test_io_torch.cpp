#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "io/torch_checkpoint.h"
#include "mamba2/error.h"
#include "test_files.h"

namespace fs = std::filesystem;
using mamba2::test::read_file;
using mamba2::test::write_file;
using mamba2::Error;
using namespace std::string_literals;

namespace {

const fs::path kTorchDir = fs::path(MAMBA2_FIXTURES_DIR) / "io";

fs::path torch_scratch(const std::string& name) { return mamba2::test::scratch_path("io_torch", name); }

std::string torch_error(const fs::path& p) {
  return mamba2::test::error_message([&] { mamba2::read_torch_checkpoint(p); });
}

std::string le(uint64_t v, int n) {
  std::string s(size_t(n), '\0');
  for (int i = 0; i < n; ++i) s[size_t(i)] = char(v >> (8 * i));
  return s;
}

// A minimal zip of stored entries (CRCs left zero: the reader does not check them).
std::string make_zip(const std::vector<std::pair<std::string, std::string>>& entries, uint16_t method = 0) {
  std::string out, central;
  for (const auto& [name, data] : entries) {
    const uint64_t offset = out.size();
    out += le(0x04034b50, 4) + le(20, 2) + le(0, 2) + le(method, 2) + le(0, 4) + le(0, 4) + le(data.size(), 4) +
           le(data.size(), 4) + le(name.size(), 2) + le(0, 2) + name + data;
    central += le(0x02014b50, 4) + le(20, 2) + le(20, 2) + le(0, 2) + le(method, 2) + le(0, 4) + le(0, 4) +
               le(data.size(), 4) + le(data.size(), 4) + le(name.size(), 2) + le(0, 2) + le(0, 2) + le(0, 2) +
               le(0, 2) + le(0, 4) + le(offset, 4) + name;
  }
  const uint64_t cd_off = out.size();
  out += central;
  out += le(0x06054b50, 4) + le(0, 4) + le(entries.size(), 2) + le(entries.size(), 2) + le(central.size(), 4) +
         le(cd_off, 4) + le(0, 2);
  return out;
}

std::string pickle_error(const std::string& pickle, const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  auto entries = extra;
  entries.emplace_back("archive/data.pkl", pickle);
  auto p = torch_scratch("crafted.pt");
  write_file(p, make_zip(entries));
  return torch_error(p);
}

std::vector<float> values_of(const mamba2::StoredTensor& t) {
  std::vector<float> out(size_t(t.numel()));
  if (out.empty()) return out;
  mamba2::convert_to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

void expect_matches(const mamba2::TensorArchive& ar, const nlohmann::json& expected) {
  ASSERT_EQ(ar.tensors().size(), expected.size());
  for (const auto& [name, e] : expected.items()) {
    const auto* t = ar.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(mamba2::dtype_name(t->dtype), e["dtype"].get<std::string>()) << name;
    EXPECT_EQ(t->shape, e["shape"].get<std::vector<int64_t>>()) << name;
    EXPECT_EQ(t->nbytes, size_t(t->numel()) * mamba2::dtype_size(t->dtype)) << name;
    EXPECT_EQ(values_of(*t), e["values"].get<std::vector<float>>()) << name;
  }
}

nlohmann::json expected(const char* which) {
  return nlohmann::json::parse(read_file(kTorchDir / "expected.json"))[which];
}

}  // namespace

TEST(TorchCheckpointTest, ReadsRealStateDict) {
  auto ar = mamba2::read_torch_checkpoint(kTorchDir / "state.pt");
  expect_matches(ar, expected("state"));
  EXPECT_EQ(ar.find("f32")->file, (kTorchDir / "state.pt").string());
}

TEST(TorchCheckpointTest, TiedTensorsShareTheMappedStorage) {
  auto ar = mamba2::read_torch_checkpoint(kTorchDir / "state.pt");
  const auto* emb = ar.find("embedding.weight");
  const auto* head = ar.find("lm_head.weight");
  ASSERT_TRUE(emb && head);
  EXPECT_EQ(emb->data, head->data);
  // "row" is a contiguous view at element offset 10 of the 4x5 storage that "window" also uses.
  EXPECT_EQ(values_of(*ar.find("row")), (std::vector<float>{10, 11, 12, 13, 14}));
}

TEST(TorchCheckpointTest, ReadsZip64Archive) {
  expect_matches(mamba2::read_torch_checkpoint(kTorchDir / "zip64.pt"), expected("state"));
}

TEST(TorchCheckpointTest, ReadsModuleStateDictAndNestedStateDict) {
  expect_matches(mamba2::read_torch_checkpoint(kTorchDir / "module.pt"), expected("module"));
  expect_matches(mamba2::read_torch_checkpoint(kTorchDir / "nested.pt"), expected("module"));
}

TEST(TorchCheckpointTest, RefusesLegacyFormat) {
  auto err = torch_error(kTorchDir / "legacy.pt");
  EXPECT_NE(err.find("[torch]"), std::string::npos) << err;
  EXPECT_NE(err.find("legacy torch serialization is not supported"), std::string::npos) << err;
  EXPECT_NE(err.find("_use_new_zipfile_serialization=True"), std::string::npos) << err;
}

TEST(TorchCheckpointTest, RefusesForbiddenGlobals) {
  auto err = torch_error(kTorchDir / "malicious_global.pt");
  EXPECT_NE(err.find("pickle refers to forbidden global 'os.system'"), std::string::npos) << err;
  EXPECT_NE(err.find("malicious_global.pt"), std::string::npos) << err;
  err = torch_error(kTorchDir / "malicious_stack_global.pt");
  EXPECT_NE(err.find("forbidden global 'builtins.eval'"), std::string::npos) << err;
  EXPECT_NE(pickle_error("\x80\x02" "csubprocess\nPopen\n.").find("'subprocess.Popen'"), std::string::npos);
  EXPECT_NE(pickle_error("\x80\x02" "ctorch\nload\n.").find("'torch.load'"), std::string::npos);
}

TEST(TorchCheckpointTest, RefusesCompressedEntries) {
  auto err = torch_error(kTorchDir / "compressed.pt");
  EXPECT_NE(err.find("compressed"), std::string::npos) << err;
  EXPECT_NE(err.find("'state/"), std::string::npos) << err;
}

TEST(TorchCheckpointTest, RefusesUnsupportedDtypeNamingTensor) {
  auto err = torch_error(kTorchDir / "int64.pt");
  EXPECT_NE(err.find("'steps'"), std::string::npos) << err;
  EXPECT_NE(err.find("LongStorage"), std::string::npos) << err;
}

TEST(TorchCheckpointTest, RejectsMalformedPickles) {
  EXPECT_NE(pickle_error("\x80\x02\xff").find("opcode 0xff"), std::string::npos);
  EXPECT_NE(pickle_error("\x80\x02" "a").find("underflow"), std::string::npos);
  EXPECT_NE(pickle_error("\x80\x02h\x07.").find("memo entry 7"), std::string::npos);
  EXPECT_NE(pickle_error("\x80\x02X\xff\xff\xff\x7f").find("ends unexpectedly"), std::string::npos);
  EXPECT_NE(pickle_error("\x80\x02" "cos\nsys").find("GLOBAL"), std::string::npos);
  EXPECT_NE(pickle_error("\x80\x02]q\x00."s).find("not a dict"), std::string::npos);
  EXPECT_NE(pickle_error("\x80\x02}(K\x01u.").find("odd"), std::string::npos);
  // A list appended to itself: cyclic, must neither hang nor leak.
  EXPECT_NE(pickle_error("\x80\x02]q\x00h\x00" "a."s).find("not a dict"), std::string::npos);
  // Marks hidden from plain pops: "(" then SETITEM may not reach below the mark.
  EXPECT_NE(pickle_error("\x80\x02}(K\x01s.").find("underflow"), std::string::npos);
  // A stack bomb is capped.
  EXPECT_NE(pickle_error("\x80\x02" + std::string((1 << 16) + 1, 'N')).find("stack exceeds"), std::string::npos);
  // Storage that the archive lacks, and one too small for its element count.
  const std::string rebuild =
      "\x80\x02}(X\x01\x00\x00\x00t"
      "ctorch._utils\n_rebuild_tensor_v2\n"
      "((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x04tQ"
      "K\x00K\x04\x85K\x01\x85\x89}tRu."s;
  EXPECT_NE(pickle_error(rebuild).find("'archive/data/0' is missing"), std::string::npos);
  EXPECT_NE(pickle_error(rebuild, {{"archive/data/0", std::string(12, '\0')}}).find("fewer than"), std::string::npos);
  EXPECT_EQ(pickle_error(rebuild, {{"archive/data/0", std::string(16, '\0')}}), "(no error)");
  // A view reaching past its storage: size 4 at offset 1 in a 4-element storage.
  std::string past = rebuild;
  past.replace(past.find("K\x00K\x04"s), 4, "K\x01K\x04"s);
  EXPECT_NE(pickle_error(past, {{"archive/data/0", std::string(16, '\0')}}).find("reads past its storage"),
            std::string::npos);
  EXPECT_NE(pickle_error(rebuild, {{"archive/data/0", std::string(16, '\0')}, {"archive/byteorder", "big"}})
                .find("byteorder"),
            std::string::npos);
}

TEST(TorchCheckpointTest, RejectsNonZipAndBrokenZips) {
  EXPECT_NE(torch_error(kTorchDir / "f8.npy").find("legacy torch serialization"), std::string::npos);
  auto p = torch_scratch("nopkl.pt");
  write_file(p, make_zip({{"archive/version", "3"}}));
  EXPECT_NE(torch_error(p).find("no data.pkl"), std::string::npos);
  write_file(p, make_zip({{"archive/data.pkl", "\x80\x02}."}}, 8));
  EXPECT_NE(torch_error(p).find("'archive/data.pkl' is compressed"), std::string::npos);
  write_file(p, make_zip({{"archive/data.pkl", "\x80\x02}."}}));
  EXPECT_EQ(torch_error(p), "(no error)");
}

TEST(TorchCheckpointTest, EveryTruncationIsAnError) {
  auto p = torch_scratch("trunc.pt");
  fs::copy_file(kTorchDir / "state.pt", p, fs::copy_options::overwrite_existing);
  for (auto n = fs::file_size(p); n-- > 0;) {
    fs::resize_file(p, n);
    EXPECT_THROW(mamba2::read_torch_checkpoint(p), Error) << "length " << n;
  }
}

TEST(TorchCheckpointTest, CorruptBytesNeverCrash) {
  for (const char* name : {"state.pt", "zip64.pt"}) {
    const std::string bytes = read_file(kTorchDir / name);
    auto p = torch_scratch("flip.pt");
    write_file(p, bytes);
    std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
    auto put = [&](size_t i, char c) {
      f.seekp(std::streamoff(i));
      f.put(c);
      f.flush();
    };
    size_t errors = 0;
    for (size_t i = 0; i < bytes.size(); ++i) {
      for (unsigned char mask : {0xffu, 0x01u, 0x80u}) {
        put(i, char(bytes[i] ^ mask));
        try {
          auto ar = mamba2::read_torch_checkpoint(p);
          for (const auto& [n, t] : ar.tensors()) values_of(t);  // touch every byte it points at
        } catch (const Error&) {
          ++errors;
        }
      }
      put(i, bytes[i]);
    }
    EXPECT_GT(errors, bytes.size()) << name;
  }
}
