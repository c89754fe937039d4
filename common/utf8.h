// Text checks for reading user data.
#ifndef FEDPERS_COMMON_UTF8_H_
#define FEDPERS_COMMON_UTF8_H_

#include "absl/strings/string_view.h"
#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace fedpers {

// Offset of the first byte that is not part of well-formed UTF-8 (no
// overlongs, surrogates or code points above U+10FFFF), or npos.
size_t FindInvalidUtf8(absl::string_view text);

// OK when `text` is well-formed UTF-8 without NUL or other C0 control bytes
// (tab, newline, carriage return and form feed are allowed). Otherwise
// InvalidArgument "<what>: invalid UTF-8 at byte N" or "<what>: binary data
// (byte 0x00 at offset N)".
absl::Status CheckText(absl::string_view text, absl::string_view what);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_UTF8_H_
