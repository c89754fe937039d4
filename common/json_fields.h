// Reading the fields of a JSON config object with errors that name the
// field: the one way fedpers' config parsers (experiment, serve) check keys
// and types. Header-only; thread-compatible.
//
// A field of integral type takes a JSON integer, or a number with an
// integral value, within the type's range (a negative value for an unsigned
// field is an error, not a wrap); a floating field takes any finite number;
// bool and string fields take exactly their JSON type. Other types go
// through nlohmann's conversion. The parsers check ranges beyond the type.
#ifndef FEDPERS_COMMON_JSON_FIELDS_H_
#define FEDPERS_COMMON_JSON_FIELDS_H_

#include <cmath>
#include <initializer_list>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace fedpers {

// InvalidArgument naming the first key of `j` outside `keys`, or `where` when
// `j` is not an object. `where` names the object for a person ("the serve
// config", "\"round\"").
inline absl::Status CheckOnlyKeys(const nlohmann::json& j, std::initializer_list<absl::string_view> keys,
                                  absl::string_view where) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be a JSON object"));
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (absl::string_view k : keys) known = known || it.key() == k;
    if (!known) return absl::InvalidArgumentError(absl::StrCat("unknown key \"", it.key(), "\" in ", where));
  }
  return absl::OkStatus();
}

// Reads `key` of object `j` into `out` when present; leaves `out` as it is
// when absent. `prefix` goes before the key in errors ("round: ").
template <typename T>
absl::Status ReadJsonField(const nlohmann::json& j, const char* key, T& out, absl::string_view prefix = "") {
  auto it = j.find(key);
  if (it == j.end()) return absl::OkStatus();
  const nlohmann::json& v = *it;
  std::string shown = v.dump();
  if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
  auto bad = [&](absl::string_view expected) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "\"", key, "\" must be ", expected, ", got ", shown));
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return bad("true or false");
    out = v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    using Limits = std::numeric_limits<T>;
    const std::string range = absl::StrCat("an integer in [", Limits::min(), ", ", Limits::max(), "]");
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(Limits::max())) return bad(range);
      out = static_cast<T>(u);
    } else if (v.is_number_integer()) {
      const int64_t i = v.get<int64_t>();
      if (i < 0 ? (!Limits::is_signed || i < static_cast<int64_t>(Limits::min()))
                : static_cast<uint64_t>(i) > static_cast<uint64_t>(Limits::max())) {
        return bad(range);
      }
      out = static_cast<T>(i);
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      // 2^63 and up do not fit an int64 (the double nearest INT64_MAX is 2^63).
      if (!(d == std::floor(d)) || d < static_cast<double>(Limits::min()) || d >= std::ldexp(1.0, Limits::digits)) {
        return bad(range);
      }
      out = static_cast<T>(d);
    } else {
      return bad("an integer");
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) return bad("a number");
    const double d = v.get<double>();
    if (!std::isfinite(d) || std::fabs(d) > static_cast<double>(std::numeric_limits<T>::max())) {
      return bad("a finite number");
    }
    out = static_cast<T>(d);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) return bad("a string");
    out = v.get<std::string>();
  } else {
    try {
      out = v.get<T>();
    } catch (const nlohmann::json::exception&) {
      return bad("of another type");
    }
  }
  return absl::OkStatus();
}

// Returns from the calling function when ReadJsonField fails.
#define FEDPERS_READ_JSON(json, key, field, prefix)                                        \
  if (absl::Status fedpers_read_status_ = ::fedpers::ReadJsonField(json, key, field, prefix); \
      !fedpers_read_status_.ok())                                                           \
  return fedpers_read_status_

// Configs nest a few levels; deeper input is refused while parsing, since
// nlohmann's dump() and comparisons recurse once per level and would run out
// of stack on it.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text` as one JSON object; the error names `what` and, for text that
// is not JSON, the parser's position and reason (NaN and Infinity are not
// JSON; a number beyond double's range is an overflow; nesting beyond
// kMaxJsonDepth; a key given twice in one object, which a reader of the file
// would take for the first value while the parser keeps the last).
inline absl::Status ParseJsonObject(const std::string& text, absl::string_view what, nlohmann::json& out) {
  struct TooDeep {};
  struct DuplicateKey {
    std::string key;
  };
  std::vector<std::set<std::string>> keys_of_open_objects;
  try {
    out = nlohmann::json::parse(text, [&keys_of_open_objects](int depth, nlohmann::json::parse_event_t event,
                                                              nlohmann::json& parsed) {
      if (depth > kMaxJsonDepth) throw TooDeep{};
      using Event = nlohmann::json::parse_event_t;
      if (event == Event::object_start) keys_of_open_objects.emplace_back();
      if (event == Event::object_end) keys_of_open_objects.pop_back();
      if (event == Event::key && !keys_of_open_objects.back().insert(parsed.get<std::string>()).second) {
        throw DuplicateKey{parsed.get<std::string>()};
      }
      return true;
    });
  } catch (const TooDeep&) {
    return absl::InvalidArgumentError(absl::StrCat(what, " nests deeper than ", kMaxJsonDepth, " levels"));
  } catch (const DuplicateKey& d) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " gives the key \"", d.key, "\" twice in one object"));
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for 1e999
    return absl::InvalidArgumentError(absl::StrCat(what, " is not valid JSON: ", e.what()));
  }
  if (!out.is_object()) return absl::InvalidArgumentError(absl::StrCat(what, " must be a JSON object"));
  return absl::OkStatus();
}

}  // namespace fedpers

#endif  // FEDPERS_COMMON_JSON_FIELDS_H_
