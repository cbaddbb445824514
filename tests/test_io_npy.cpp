#include <gtest/gtest.h>

#include <cstring>

#include "io/npy.h"
#include "mamba2/error.h"
#include "test_files.h"

namespace fs = std::filesystem;
using mamba2::test::read_file;
using mamba2::test::write_file;
using mamba2::Error;

namespace {

const fs::path kNpyDir = fs::path(MAMBA2_FIXTURES_DIR) / "io";

fs::path npy_scratch(const std::string& name) { return mamba2::test::scratch_path("io_npy", name); }

std::string npy_error(const fs::path& p) {
  return mamba2::test::error_message([&] { mamba2::read_npy(p); });
}

// A version 1.0 file with the given header text (padded as NumPy does) and data bytes.
std::string make_npy(std::string header, const std::string& data) {
  header.resize((10 + header.size() + 1 + 63) / 64 * 64 - 11, ' ');
  header += '\n';
  return std::string("\x93NUMPY\x01\x00", 8) + char(header.size() & 0xff) + char(header.size() >> 8) + header + data;
}

}  // namespace

TEST(NpyTest, RoundTripsShapes) {
  const std::vector<float> v = {0.5f, -1.25f, 3.0f, 1e-7f, 42.0f, -0.0f};
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 3}, {6}, {1, 2, 3}, {}, {0, 4}}) {
    auto p = npy_scratch("rt.npy");
    mamba2::write_npy(p, v.data(), shape);
    const std::string bytes = read_file(p);
    ASSERT_GE(bytes.size(), 10u);
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
    const size_t header_len = uint8_t(bytes[8]) | size_t(uint8_t(bytes[9])) << 8;
    EXPECT_EQ((10 + header_len) % 64, 0u);
    EXPECT_EQ(bytes[10 + header_len - 1], '\n');
    EXPECT_NE(bytes.find("'descr': '<f4', 'fortran_order': False"), std::string::npos);

    auto a = mamba2::read_npy(p);
    EXPECT_EQ(a.shape, shape);
    size_t n = 1;
    for (auto d : shape) n *= size_t(d);
    ASSERT_EQ(a.data.size(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(a.data[i], double(v[i]));
  }
  auto p = npy_scratch("shape.npy");
  mamba2::write_npy(p, v.data(), {6});
  EXPECT_NE(read_file(p).find("'shape': (6,)"), std::string::npos);
  mamba2::write_npy(p, v.data(), {});
  EXPECT_NE(read_file(p).find("'shape': ()"), std::string::npos);
}

TEST(NpyTest, ReadsNumpyWrittenFiles) {
  auto f8 = mamba2::read_npy(kNpyDir / "f8.npy");
  EXPECT_EQ(f8.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f8.data, (std::vector<double>{-0.5, -0.25, 0.0, 0.25, 0.5, 0.75}));
  auto v2 = mamba2::read_npy(kNpyDir / "f4_v2.npy");
  EXPECT_EQ(v2.shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(v2.data, (std::vector<double>{0, 1.5, 3, 4.5, 6}));
}

TEST(NpyTest, RefusesUnsupportedLayouts) {
  EXPECT_NE(npy_error(kNpyDir / "fortran.npy").find("fortran_order"), std::string::npos);
  auto err = npy_error(kNpyDir / "i8.npy");
  EXPECT_NE(err.find("[npy]"), std::string::npos) << err;
  EXPECT_NE(err.find("'<i8'"), std::string::npos) << err;
  auto p = npy_scratch("bad.npy");
  write_file(p, make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", std::string(4, 0)));
  EXPECT_NE(npy_error(p).find("'>f4'"), std::string::npos);
}

TEST(NpyTest, RejectsCorruptFiles) {
  auto p = npy_scratch("corrupt.npy");
  auto err_for = [&](const std::string& bytes) {
    write_file(p, bytes);
    return npy_error(p);
  };
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1), }";
  EXPECT_EQ(err_for(make_npy(ok, std::string(8, 0))), "(no error)");
  EXPECT_NE(err_for(make_npy(ok, std::string(12, 0))).find("data section"), std::string::npos);
  EXPECT_NE(err_for("not an npy file at all").find("bad magic"), std::string::npos);
  EXPECT_NE(err_for(make_npy("{'descr': '<f4', 'shape': (2, 1), 'fortran_order': Maybe}", "")).find("True or False"),
            std::string::npos);
  EXPECT_NE(err_for(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", ""))
                .find("overflows"),
            std::string::npos);
  EXPECT_NE(err_for(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", ""))
                .find("overflows"),
            std::string::npos);
  EXPECT_NE(err_for(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", "")).find("dimension"),
            std::string::npos);
  EXPECT_NE(err_for(make_npy("{'descr': '<f4', 'fortran_order': False}", "")).find("lacks"), std::string::npos);

  const std::string full = make_npy(ok, std::string(8, 0));
  for (size_t n = 0; n < full.size(); ++n) {
    write_file(p, full.substr(0, n));
    EXPECT_THROW(mamba2::read_npy(p), Error) << "length " << n;
  }
}
