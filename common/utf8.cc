#include "common/utf8.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fedpers {

size_t FindInvalidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    const bool overlong = (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += len;
  }
  return absl::string_view::npos;
}

absl::Status CheckText(absl::string_view text, absl::string_view what) {
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f') || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: binary data (byte 0x%02x at offset %d)", what, c, i));
    }
  }
  if (size_t bad = FindInvalidUtf8(text); bad != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid UTF-8 at byte ", bad));
  }
  return absl::OkStatus();
}

namespace {

// Length of the well-formed UTF-8 sequence at `p[i]`, or 0.
size_t SequenceLength(absl::string_view s, size_t i) {
  const size_t bad = FindInvalidUtf8(s.substr(i, std::min<size_t>(4, s.size() - i)));
  const unsigned char c = static_cast<unsigned char>(s[i]);
  const size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : 4;
  return bad == absl::string_view::npos || bad >= len ? len : 0;
}

// C0, DEL, or a C1 code point (U+0080-U+009F, encoded 0xc2 0x80-0x9f).
bool IsControlAt(absl::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x20 || c == 0x7f) return true;
  return c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
         static_cast<unsigned char>(s[i + 1]) <= 0x9f;
}

// The code point of the well-formed sequence of `len` bytes at s[i].
uint32_t CodePointAt(absl::string_view s, size_t i, size_t len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return cp;
}

// Invisible and bidirectional format characters: they reorder or hide text
// on a terminal ("Trojan Source") and make different ids look alike.
bool IsFormatCharacter(uint32_t cp) {
  return cp == 0x061c || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0x202a && cp <= 0x202e) ||
         (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0xfeff;
}

}  // namespace

absl::Status CheckUserId(absl::string_view id, absl::string_view what) {
  if (id.empty() || id.size() > kMaxUserIdBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: a user id must be 1-%d bytes (this one has %d)",
                                                      what, kMaxUserIdBytes, id.size()));
  }
  if (size_t bad = FindInvalidUtf8(id); bad != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a user id must be UTF-8 (invalid at byte ", bad, ")"));
  }
  for (size_t i = 0; i < id.size();) {
    if (IsControlAt(id, i)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: a user id must not contain control characters (byte 0x%02x at offset %d)",
                          what, static_cast<unsigned char>(id[i]), i));
    }
    const size_t len = SequenceLength(id, i);  // > 0: the id is well-formed
    if (const uint32_t cp = CodePointAt(id, i, len); IsFormatCharacter(cp)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: a user id must not contain invisible or bidirectional format characters (U+%04X at offset %d)",
          what, cp, i));
    }
    i += len;
  }
  return absl::OkStatus();
}

std::string EscapeForTerminal(absl::string_view text, bool keep_line_breaks) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const size_t len = SequenceLength(text, i);
    const bool line_break = text[i] == '\n' || text[i] == '\t';
    if (len == 0 || (IsControlAt(text, i) && !(keep_line_breaks && line_break))) {
      const size_t n = len == 0 ? 1 : len;
      for (size_t k = 0; k < n; ++k) {
        absl::StrAppendFormat(&out, "\\x%02x", static_cast<unsigned char>(text[i + k]));
      }
      i += n;
    } else if (const uint32_t cp = CodePointAt(text, i, len); IsFormatCharacter(cp)) {
      absl::StrAppendFormat(&out, "\\u%04x", cp);
      i += len;
    } else {
      out.append(text.data() + i, len);
      i += len;
    }
  }
  return out;
}

}  // namespace fedpers
