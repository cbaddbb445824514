#include "tokenizer/gguf_vocab.h"

#include "mamba2/error.h"

namespace mamba2 {
namespace {

using nlohmann::json;

// llama.cpp's token types.
enum TokenType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

const json& array_key(const GgufFile& g, const char* key, const std::string& where) {
  const auto it = g.metadata.find(key);
  if (it == g.metadata.end()) fail("{}: metadata key {} is missing", where, key);
  if (!it->is_array()) fail("{}: metadata key {} is not an array", where, key);
  return *it;
}

std::string string_key(const GgufFile& g, const char* key, const std::string& where) {
  const auto it = g.metadata.find(key);
  if (it == g.metadata.end()) fail("{}: metadata key {} is missing", where, key);
  if (!it->is_string()) fail("{}: metadata key {} is not a string", where, key);
  return it->get<std::string>();
}

}  // namespace

json gguf_tokenizer_json(const GgufFile& g, const std::string& where) {
  if (const std::string model = string_key(g, "tokenizer.ggml.model", where); model != "gpt2")
    fail("{}: tokenizer.ggml.model is \"{}\"; mamba2 reads byte-level BPE (\"gpt2\") vocabularies: give the "
         "model's tokenizer.json with --tokenizer",
         where, model);
  if (const std::string pre = string_key(g, "tokenizer.ggml.pre", where); pre != "gpt-2" && pre != "olmo")
    fail("{}: tokenizer.ggml.pre is \"{}\"; mamba2 reads GPT-2's split (\"gpt-2\", \"olmo\"): give the "
         "model's tokenizer.json with --tokenizer",
         where, pre);
  const json& tokens = array_key(g, "tokenizer.ggml.tokens", where);
  const json& merges = array_key(g, "tokenizer.ggml.merges", where);
  const json* types = nullptr;
  if (g.metadata.contains("tokenizer.ggml.token_type")) {
    types = &array_key(g, "tokenizer.ggml.token_type", where);
    if (types->size() != tokens.size())
      fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", where, types->size(), tokens.size());
  }

  json vocab = json::object();
  json added = json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (!tokens[id].is_string()) fail("{}: tokenizer.ggml.tokens[{}] is not a string", where, id);
    const std::string& tok = tokens[id].get_ref<const std::string&>();
    int64_t type = kNormal;
    if (types) {
      if (!(*types)[id].is_number_integer()) fail("{}: tokenizer.ggml.token_type[{}] is not an integer", where, id);
      type = (*types)[id].get<int64_t>();
      if (type < kNormal || type > kByte)
        fail("{}: tokenizer.ggml.token_type[{}] is {}, not a llama.cpp token type (1 to 6)", where, id, type);
    }
    if (vocab.contains(tok)) fail("{}: tokenizer.ggml.tokens[{}] repeats token {}", where, id, json(tok).dump());
    vocab[tok] = id;
    if (type == kControl || type == kUserDefined)
      added.push_back({{"id", id}, {"content", tok}, {"special", type == kControl}, {"single_word", false},
                       {"lstrip", false}, {"rstrip", false}, {"normalized", type == kUserDefined}});
  }
  json merge_list = json::array();
  for (size_t i = 0; i < merges.size(); ++i) {
    if (!merges[i].is_string()) fail("{}: tokenizer.ggml.merges[{}] is not a string", where, i);
    merge_list.push_back(merges[i]);
  }
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                           {"use_regex", true}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", std::move(added)},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level},
          {"post_processor", byte_level},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"vocab", std::move(vocab)},
            {"merges", std::move(merge_list)}}}};
}

}  // namespace mamba2
