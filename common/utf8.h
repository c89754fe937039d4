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

// The longest user id, in bytes.
inline constexpr size_t kMaxUserIdBytes = 256;

// OK when `id` can name a user: 1 to kMaxUserIdBytes bytes of well-formed
// UTF-8 without control characters (C0, DEL, C1; tab and newline included)
// or invisible and bidirectional format characters (U+200B-U+200F,
// U+202A-U+202E, U+2060-U+2064, U+2066-U+2069, U+061C, U+FEFF), since ids
// are shown in operators' terminals, tables and file listings, and two ids
// must not look alike.
// Otherwise InvalidArgument naming `what` and the offending byte offset; the
// message never contains the id itself.
absl::Status CheckUserId(absl::string_view id, absl::string_view what);

// `text` with every byte that a terminal could act on made visible: control
// characters (C0, DEL, C1) and bytes that are not well-formed UTF-8 become
// \xNN (C1 code points: each of their two bytes), and the format characters
// CheckUserId refuses become \uNNNN. Printable text, UTF-8
// included, is returned unchanged, and so are newlines and tabs when
// `keep_line_breaks` (multi-line messages). For text from peers and files on
// its way to a terminal: error messages, tables, logs.
std::string EscapeForTerminal(absl::string_view text, bool keep_line_breaks = false);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_UTF8_H_
