// A tokenized training corpus as `mamba2 train` leaves it in DIR/data: <name>.json (counts, EOS,
// fingerprint), <name>.tokens (uint16/uint32 ids) and <name>.docs (uint64 document starts).
// The input is split into the three files by a header of two little-endian uint32 lengths
// (json, tokens); the docs file is the rest. An opened corpus is read whole.
#include <cstring>

#include "fuzz_common.h"
#include "train/data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint32_t json_len, tokens_len;
  std::memcpy(&json_len, data, 4);
  std::memcpy(&tokens_len, data + 4, 4);
  data += 8;
  size -= 8;
  if (json_len > size || tokens_len > size - json_len) return 0;
  mamba2::fuzz::write_input("c.json", data, json_len);
  mamba2::fuzz::write_input("c.tokens", data + json_len, tokens_len);
  mamba2::fuzz::write_input("c.docs", data + json_len + tokens_len, size - json_len - tokens_len);
  mamba2::fuzz::expect_result_or_error([&] {
    const auto c = mamba2::training::TokenCorpus::open(mamba2::fuzz::scratch_dir(), "c");
    std::vector<int32_t> ids(size_t(c.size()));
    c.read(0, c.size(), ids.data());
    (void)c.starts_between(-1, c.size());
  });
  return 0;
}
