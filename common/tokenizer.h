// Byte-level tokenizer of the built-in models: token i < 256 is byte i, then
// BOS, EOS and PAD. Stateless and thread-safe.
#ifndef FEDPERS_COMMON_TOKENIZER_H_
#define FEDPERS_COMMON_TOKENIZER_H_

#include "absl/strings/string_view.h"
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fedpers {

class ByteTokenizer {
 public:
  static constexpr int32_t kBos = 256;
  static constexpr int32_t kEos = 257;
  static constexpr int32_t kPad = 258;
  static constexpr int32_t kVocabSize = 259;

  // Bytes of `text`, with BOS first and EOS last when asked.
  static std::vector<int32_t> Encode(absl::string_view text, bool add_bos = true, bool add_eos = true);
  // Drops special tokens.
  static std::string Decode(std::span<const int32_t> tokens);
};

}  // namespace fedpers

#endif  // FEDPERS_COMMON_TOKENIZER_H_
