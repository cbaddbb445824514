// The text of one generated sequence as it streams: token bytes in, text that is safe to show
// out. Shown text never ends inside a UTF-8 character and never contains what may become the
// start of a stop string; once a stop string appears, the text before it is the last shown.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace mamba2 {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop);

  // Adds one token's bytes; returns the text that became safe to show.
  std::string push(std::string_view bytes);
  bool stopped() const { return stopped_; }
  // The end of the sequence: the text still held back (an unfinished character becomes
  // U+FFFD); nothing after a stop.
  std::string finish();

 private:
  std::vector<std::string> stop_;
  std::string bytes_;  // the start of an unfinished UTF-8 character
  std::string held_;   // whole characters that may be the start of a stop string
  bool stopped_ = false;
};

}  // namespace mamba2
