// A model's cross-entropy on a text: prefill in pieces of whole chunks with all positions'
// logits, the state carried from piece to piece, so the context is the whole text and memory is
// one piece's logits. Sums in double.
#include <algorithm>
#include <cmath>

#include "core/view.h"
#include "mamba2/error.h"
#include "mamba2/model.h"
#include "mamba2/tokenizer.h"
#include "mamba2/train.h"
#include "model/inference_state.h"
#include "ops/ops.h"

namespace mamba2 {

namespace {
// Logits of at most this many entries (positions × padded vocab) per piece.
constexpr int64_t kPieceLogits = int64_t(1) << 24;
}  // namespace

EvalResult evaluate(const Model& model, const Tokenizer& tokenizer, std::string_view text, int64_t piece_tokens) {
  if (piece_tokens < 0) fail("[eval] piece_tokens must be non-negative, got {}", piece_tokens);
  if (tokenizer.vocab_size() > model.vocab())
    fail("[eval] the tokenizer has {} ids but the model only {} logits", tokenizer.vocab_size(), model.vocab());
  std::vector<int32_t> ids;
  if (const auto eos = tokenizer.eos_id()) ids.push_back(*eos);
  const size_t first_real = ids.size();
  const std::vector<int32_t> text_ids = tokenizer.encode(text);
  ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  EvalResult r;
  r.tokens = int64_t(text_ids.size());
  r.bytes = int64_t(text.size());
  if (ids.size() < 2)
    fail("[eval] the text has {} token(s): nothing to predict{}", text_ids.size(),
         first_real ? "" : " (the tokenizer has no EOS token to start from, so the first token is not predicted)");

  const int64_t V = model.vocab(), Q = model.config().chunk_size, n = int64_t(ids.size());
  const int64_t piece =
      piece_tokens > 0 ? piece_tokens : std::max<int64_t>(Q, std::min<int64_t>(8192, kPieceLogits / V) / Q * Q);
  const auto state = model.new_state(1);
  std::vector<float> logits;
  for (int64_t p0 = 0; p0 + 1 < n; p0 += piece) {
    // Positions p0 .. p1-1 predict ids p0+1 .. p1.
    const int64_t len = std::min(piece, n - 1 - p0);
    const std::span<const int32_t> in(ids.data() + p0, size_t(len));
    const int64_t lengths[] = {len};
    model.prefill(in, lengths, state.get(), true, logits);
    const std::span<const int32_t> targets(ids.data() + p0 + 1, size_t(len));
    r.nats += ops::cross_entropy(MatView{logits.data(), len, V, V}, targets, MatView{}, 1.0f);
    r.predictions += len;
  }
  r.loss = r.nats / double(r.predictions);
  r.perplexity = std::exp(r.loss);
  r.bits_per_byte = r.bytes > 0 ? r.nats / std::log(2.0) / double(r.bytes) : std::nan("");
  return r;
}

}  // namespace mamba2
