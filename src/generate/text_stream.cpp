#include "generate/text_stream.h"

#include <algorithm>

#include "core/utf8.h"
#include "mamba2/error.h"

namespace mamba2 {

TextStream::TextStream(std::vector<std::string> stop) : stop_(std::move(stop)) {
  for (const std::string& s : stop_) {
    if (s.empty()) fail("[generate] a stop string is empty");
    if (utf8::first_invalid(s) != std::string::npos) fail("[generate] stop string '{}' is not valid UTF-8", s);
  }
}

std::string TextStream::push(std::string_view bytes) {
  if (stopped_) return {};
  bytes_ += bytes;
  const size_t tail = utf8::incomplete_tail(bytes_);
  utf8::append_lossy(std::string_view(bytes_).substr(0, bytes_.size() - tail), held_);
  bytes_.erase(0, bytes_.size() - tail);

  // Shown text never held the start of a stop string, so a stop can only lie inside held_.
  size_t first = std::string::npos;
  for (const std::string& s : stop_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    bytes_.clear();
    return out;
  }
  // Keep back the longest end of held_ that a stop string starts with.
  size_t keep = 0;
  for (const std::string& s : stop_)
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n)
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string TextStream::finish() {
  if (stopped_) return {};
  std::string out = std::move(held_);
  utf8::append_lossy(bytes_, out);
  held_.clear();
  bytes_.clear();
  return out;
}

}  // namespace mamba2
