#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "mamba2/error.h"
#include "test_files.h"

namespace fs = std::filesystem;
using mamba2::test::read_file;
using mamba2::test::write_file;
using mamba2::DType;
using mamba2::Error;

namespace {

fs::path st_scratch(const std::string& name) { return mamba2::test::scratch_path("io_safetensors", name); }

// A safetensors file from a raw header string and data section.
std::string make_file(const std::string& header, const std::string& data, uint64_t len_override = 0) {
  const uint64_t len = len_override ? len_override : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char(len >> (8 * i));
  return out + header + data;
}

std::string st_error(const fs::path& p) {
  return mamba2::test::error_message([&] { mamba2::read_safetensors(p); });
}

std::string st_error_of_bytes(const std::string& bytes) {
  auto p = st_scratch("crafted.safetensors");
  write_file(p, bytes);
  return st_error(p);
}

std::vector<uint16_t> halves(const mamba2::StoredTensor& t) {
  std::vector<uint16_t> out(t.nbytes / 2);
  std::memcpy(out.data(), t.data, t.nbytes);
  return out;
}

const std::vector<float> kValues = {1.0f, -2.5f, 1.0f / 3.0f, 0.1f, 65504.0f, 0.0f};

}  // namespace

TEST(SafetensorsTest, RoundTripsAllDtypes) {
  auto p = st_scratch("round.safetensors");
  std::vector<mamba2::TensorToWrite> ts = {
      {"z.f32", DType::F32, {2, 3}, kValues.data()},
      {"a.bf16", DType::BF16, {6}, kValues.data()},
      {"m.f16", DType::F16, {3, 2}, kValues.data()},
  };
  mamba2::write_safetensors(p, ts, {{"format", "pt"}});
  auto ar = mamba2::read_safetensors(p);
  ASSERT_EQ(ar.tensors().size(), 3u);

  const auto* f32 = ar.find("z.f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->dtype, DType::F32);
  EXPECT_EQ(f32->shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(f32->nbytes, 24u);
  EXPECT_EQ(std::memcmp(f32->data, kValues.data(), 24), 0);
  EXPECT_EQ(f32->file, p.string());

  // Hand-rounded to nearest even: 1/3 = 0x3EAAAAAB → 0x3EAB, 0.1 = 0x3DCCCCCD → 0x3DCD,
  // 65504 = 0x477FE000 → 0x4780.
  const auto* bf = ar.find("a.bf16");
  ASSERT_NE(bf, nullptr);
  EXPECT_EQ(bf->dtype, DType::BF16);
  EXPECT_EQ(halves(*bf), (std::vector<uint16_t>{0x3F80, 0xC020, 0x3EAB, 0x3DCD, 0x4780, 0x0000}));

  const auto* h = ar.find("m.f16");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->dtype, DType::F16);
  EXPECT_EQ(h->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(halves(*h), (std::vector<uint16_t>{0x3C00, 0xC100, 0x3555, 0x2E66, 0x7BFF, 0x0000}));
}

TEST(SafetensorsTest, WritesSortedPaddedHeader) {
  auto p = st_scratch("layout.safetensors");
  const float v[2] = {1, 2};
  mamba2::write_safetensors(p, {{"b", DType::F32, {2}, v}, {"a", DType::F16, {1}, v}}, {{"k", "v"}});
  const std::string bytes = read_file(p);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  EXPECT_EQ(len % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + len + 2 + 8);
  const std::string header = bytes.substr(8, len);
  EXPECT_LT(header.find("\"a\""), header.find("\"b\""));
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json::array({0, 2}));
  EXPECT_EQ(j["b"]["data_offsets"], nlohmann::json::array({2, 10}));
  EXPECT_EQ(j["__metadata__"]["k"], "v");
  EXPECT_EQ(header.find_last_not_of(' ') + 1, header.find_last_of('}') + 1);
}

TEST(SafetensorsTest, FailedWriteLeavesOriginalUntouched) {
  auto p = st_scratch("keep.safetensors");
  const float v[2] = {1, 2};
  mamba2::write_safetensors(p, {{"x", DType::F32, {2}, v}});
  const std::string before = read_file(p);
  EXPECT_THROW(mamba2::write_safetensors(p, {{"x", DType::F32, {2}, v}, {"x", DType::F32, {2}, v}}), Error);
  EXPECT_THROW(mamba2::write_safetensors(p, {{"y", DType::F32, {-1}, v}}), Error);
  EXPECT_THROW(mamba2::write_safetensors(p, {{"y", DType::F32, {2}, nullptr}}), Error);
  EXPECT_EQ(read_file(p), before);
  for (const auto& e : fs::directory_iterator(p.parent_path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  EXPECT_THROW(mamba2::write_safetensors(st_scratch("no_such_dir") / "x.safetensors", {{"x", DType::F32, {2}, v}}),
               Error);
}

TEST(SafetensorsTest, EveryTruncationIsAnError) {
  auto p = st_scratch("full.safetensors");
  const float v[6] = {1, 2, 3, 4, 5, 6};
  mamba2::write_safetensors(p, {{"a", DType::BF16, {2, 3}, v}, {"b", DType::F32, {6}, v}});
  const std::string bytes = read_file(p);
  auto t = st_scratch("trunc.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_file(t, bytes.substr(0, n));
    EXPECT_THROW(mamba2::read_safetensors(t), Error) << "length " << n;
  }
}

TEST(SafetensorsTest, RejectsCorruptHeaders) {
  const std::string data(8, '\0');
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_EQ(st_error_of_bytes(make_file(ok, data)), "(no error)");

  auto err = st_error_of_bytes(make_file(R"({"t":{"dtype":"F32",)", data));
  EXPECT_NE(err.find("[safetensors]"), std::string::npos) << err;
  EXPECT_NE(err.find("not valid JSON"), std::string::npos) << err;
  EXPECT_NE(st_error_of_bytes(make_file("[1,2]", data)).find("not a JSON object"), std::string::npos);
  EXPECT_NE(st_error_of_bytes(make_file(ok, data, 1000)).find("exceeds the file size"), std::string::npos);
  EXPECT_NE(st_error_of_bytes(make_file(ok, data, ~uint64_t(0))).find("exceeds the file size"), std::string::npos);
  EXPECT_NE(st_error_of_bytes(make_file(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", data)).find("'t'"),
            std::string::npos);
  EXPECT_NE(st_error_of_bytes(make_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data))
                .find("invalid dimension"),
            std::string::npos);
  EXPECT_NE(st_error_of_bytes(make_file(R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data))
                .find("invalid dimension"),
            std::string::npos);
  EXPECT_NE(st_error_of_bytes(make_file(
                R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", data))
                .find("overflows"),
            std::string::npos);
  EXPECT_NE(st_error_of_bytes(make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data))
                .find("data_offsets"),
            std::string::npos);
}

TEST(SafetensorsTest, RejectsBadOffsets) {
  const std::string data(16, '\0');
  auto err_for = [&](const std::string& header) { return st_error_of_bytes(make_file(header, data)); };
  EXPECT_NE(err_for(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})").find("outside the data"),
            std::string::npos);
  EXPECT_NE(err_for(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})").find("outside the data"),
            std::string::npos);
  // begin + length would wrap around 2^64.
  EXPECT_NE(err_for(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,7]}})")
                .find("outside the data"),
            std::string::npos);
  EXPECT_NE(err_for(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})").find("needs 8"),
            std::string::npos);
  auto err = err_for(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})");
  EXPECT_NE(err.find("overlapping"), std::string::npos) << err;
  EXPECT_NE(err.find("'a'"), std::string::npos) << err;
  EXPECT_NE(err.find("'b'"), std::string::npos) << err;
}

TEST(SafetensorsTest, RefusesUnsupportedDtypesNamingTensor) {
  for (const std::string dt : {"F64", "I64"}) {
    auto err = st_error_of_bytes(
        make_file(R"({"layers.0.w":{"dtype":")" + dt + R"(","shape":[2],"data_offsets":[0,16]}})", std::string(16, 0)));
    EXPECT_NE(err.find("'layers.0.w'"), std::string::npos) << err;
    EXPECT_NE(err.find(dt), std::string::npos) << err;
    EXPECT_NE(err.find("crafted.safetensors"), std::string::npos) << err;
  }
}

TEST(SafetensorsTest, SkipsMetadataAndAcceptsEmptyTensors) {
  auto p = st_scratch("meta.safetensors");
  write_file(p, make_file(R"({"__metadata__":{"format":"pt"},"e":{"dtype":"BF16","shape":[0,4],"data_offsets":[0,0]},)"
                           R"("s":{"dtype":"F16","shape":[],"data_offsets":[0,2]}})",
                           std::string("\x00\x3c", 2)));
  auto ar = mamba2::read_safetensors(p);
  ASSERT_EQ(ar.tensors().size(), 2u);
  EXPECT_EQ(ar.find("e")->nbytes, 0u);
  EXPECT_EQ(ar.find("s")->shape.size(), 0u);
  EXPECT_EQ(halves(*ar.find("s")), std::vector<uint16_t>{0x3C00});
}

TEST(SafetensorsTest, ReadsShardedIndex) {
  auto dir = st_scratch("sharded");
  fs::create_directories(dir);
  const float a[2] = {1, 2}, b[3] = {3, 4, 5};
  mamba2::write_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", DType::F32, {2}, a}});
  mamba2::write_safetensors(dir / "model-00002-of-00002.safetensors",
                            {{"b", DType::BF16, {3}, b}, {"c", DType::F32, {1}, a}});
  write_file(dir / "model.safetensors.index.json",
              R"({"metadata":{"total_size":18},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
              R"("b":"model-00002-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})");
  auto ar = mamba2::read_safetensors_index(dir / "model.safetensors.index.json");
  ASSERT_EQ(ar.tensors().size(), 3u);
  EXPECT_EQ(ar.files().size(), 2u);
  float got[2];
  std::memcpy(got, ar.find("a")->data, 8);
  EXPECT_EQ(got[1], 2.0f);
  EXPECT_EQ(halves(*ar.find("b")), (std::vector<uint16_t>{0x4040, 0x4080, 0x40A0}));
  EXPECT_EQ(ar.find("b")->file, (dir / "model-00002-of-00002.safetensors").string());
}

TEST(SafetensorsTest, IndexErrorsNameTheProblem) {
  auto dir = st_scratch("sharded_bad");
  fs::create_directories(dir);
  const float a[2] = {1, 2};
  mamba2::write_safetensors(dir / "s1.safetensors", {{"a", DType::F32, {2}, a}});
  auto index_error = [&](const std::string& json) {
    write_file(dir / "index.json", json);
    return mamba2::test::error_message([&] { mamba2::read_safetensors_index(dir / "index.json"); });
  };
  auto err = index_error(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  EXPECT_NE(err.find("s2.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("does not exist"), std::string::npos) << err;
  err = index_error(R"({"weight_map":{"zz":"s1.safetensors"}})");
  EXPECT_NE(err.find("'zz'"), std::string::npos) << err;
  EXPECT_NE(err.find("s1.safetensors"), std::string::npos) << err;
  EXPECT_NE(index_error(R"({"weight_map":{"a":"../s1.safetensors"}})").find("plain file name"), std::string::npos);
  EXPECT_NE(index_error(R"({"weight_map":[1]})").find("weight_map"), std::string::npos);
  EXPECT_NE(index_error(R"({"weight_map":)").find("not valid JSON"), std::string::npos);
  EXPECT_EQ(index_error(R"({"weight_map":{"a":"s1.safetensors"}})"), "(no error)");
}
