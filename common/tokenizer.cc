#include "common/tokenizer.h"

namespace fedpers {

std::vector<int32_t> ByteTokenizer::Encode(absl::string_view text, bool add_bos, bool add_eos) {
  std::vector<int32_t> out;
  out.reserve(text.size() + 2);
  if (add_bos) out.push_back(kBos);
  for (unsigned char c : text) out.push_back(c);
  if (add_eos) out.push_back(kEos);
  return out;
}

std::string ByteTokenizer::Decode(std::span<const int32_t> tokens) {
  std::string out;
  out.reserve(tokens.size());
  for (int32_t t : tokens) {
    if (t >= 0 && t < 256) out.push_back(static_cast<char>(t));
  }
  return out;
}

}  // namespace fedpers
