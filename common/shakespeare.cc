// The shakespeare corpus: the Moby Shakespeare, one file per play, split by
// (play, role) as in the LEAF benchmark.
//
// How a file is read (the Moby layout, quirks included):
// - A line is `FIELD<TAB>TEXT`. A non-empty FIELD names the speaker; an empty
//   one continues the current speaker's speech.
// - Everything before the first line whose field starts with "SCENE" is the
//   title and cast list (DRAMATIS PERSONAE): ignored. A file without such a
//   line (the poems) therefore yields no roles.
// - "ACT ..." and "SCENE ..." header lines end the current speech, and so does
//   a run of two or more blank lines: speeches and stage directions are
//   separated by one blank line, while the play title that Moby repeats
//   before every ACT/SCENE header comes after several; without this rule the
//   title would become a line of the previous scene's last speaker.
// - Text in [...] is a stage direction and is dropped, inline or spanning
//   lines (brackets nest). A direction also ends at a blank line, because
//   Moby leaves some brackets unclosed; without this an unclosed bracket
//   would swallow the rest of the play.
// - A line left empty after that is not a line: a continuation line that is
//   only a direction keeps the speaker (Moby resumes the same speech after
//   "[Aside]", "[Exit Ghost]" and the like).
// - Moby wraps long speaker names: a line without a tab directly followed by
//   a speaker line is the first part of that speaker's name ("RICHARD" +
//   "PLANTAGENET" -> "RICHARD PLANTAGENET").
// - Source typos: a line without a tab of the form `NAME: text` is a speaker
//   line; a trailing ':' of a speaker name is dropped; a speaker field with
//   no letter ("'") is a continuation. A leading '|' (the brace Moby draws
//   round lines several roles speak together) is dropped; such lines go to
//   the speaker in force. Other lines without a tab are ignored.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/atomic_file.h"
#include "common/corpus.h"
#include "common/status.h"
#include "common/utf8.h"

namespace fedpers {
namespace {

namespace fs = std::filesystem;

// One role of one play: its lines, each ending in '\n', in play order.
struct Role {
  int64_t lines = 0;
  std::string text;
};

// One line of a play file, split at its first tab.
struct PlayLine {
  absl::string_view field;  // trimmed; the whole line when there is no tab
  absl::string_view text;   // after the first tab; empty when there is none
  bool has_tab = false;
  bool blank = false;
};

PlayLine SplitPlayLine(absl::string_view line) {
  PlayLine out;
  const size_t tab = line.find('\t');
  out.has_tab = tab != absl::string_view::npos;
  out.field = absl::StripAsciiWhitespace(out.has_tab ? line.substr(0, tab) : line);
  if (out.has_tab) out.text = line.substr(tab + 1);
  out.blank = absl::StripAsciiWhitespace(line).empty();
  return out;
}

bool IsHeader(absl::string_view field) {
  return absl::StartsWith(field, "SCENE") || field == "ACT" || absl::StartsWith(field, "ACT ");
}

// Bytes >= 0x80 count as letters so that a non-ASCII name is still a name.
bool HasLetter(absl::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isalpha(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80;
  });
}

// The speaker name of a speaker field: trimmed, a trailing ':' dropped.
// Empty when the field holds no letter (then the line is a continuation).
absl::string_view SpeakerName(absl::string_view field) {
  while (absl::ConsumeSuffix(&field, ":")) field = absl::StripTrailingAsciiWhitespace(field);
  return HasLetter(field) ? field : absl::string_view();
}

// A tabless `NAME: text` line (a tab typed as ": "): splits it, or returns
// false.
bool SplitColonLine(const PlayLine& line, absl::string_view& name, absl::string_view& text) {
  if (line.has_tab || line.blank) return false;
  const size_t colon = line.field.find(": ");
  if (colon == absl::string_view::npos) return false;
  name = SpeakerName(absl::StripAsciiWhitespace(line.field.substr(0, colon)));
  text = line.field.substr(colon + 2);
  return !name.empty();
}

// Whether lines[i] is the first part of a speaker name wrapped onto the
// next line.
bool IsNameFragment(const std::vector<absl::string_view>& lines, size_t i) {
  if (i + 1 >= lines.size()) return false;
  const PlayLine line = SplitPlayLine(lines[i]);
  absl::string_view name, text;
  if (line.has_tab || line.blank || IsHeader(line.field) || SplitColonLine(line, name, text)) return false;
  const PlayLine next = SplitPlayLine(lines[i + 1]);
  return next.has_tab && !SpeakerName(next.field).empty();
}

// Removes stage directions from `text`. `depth` is the bracket nesting
// carried over from the previous line and is updated. Where a direction
// stood between two pieces of speech, they are joined by one space.
std::string StripDirections(absl::string_view text, int64_t& depth) {
  std::string out;
  bool after_direction = false;
  for (char c : text) {
    if (c == '[') {
      ++depth;
      continue;
    }
    if (c == ']') {
      if (depth > 0 && --depth == 0) after_direction = true;
      continue;  // a stray ']' is dropped too
    }
    if (depth > 0) continue;
    if (after_direction && !absl::ascii_isspace(static_cast<unsigned char>(c))) {
      while (!out.empty() && absl::ascii_isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
      if (!out.empty()) out.push_back(' ');
      after_direction = false;
    }
    out.push_back(c);
  }
  return std::string(absl::StripAsciiWhitespace(out));
}

// Adds the roles of one play (already checked to be text) to `roles`, keyed
// by role name. Returns whether the file has a SCENE line.
bool ParsePlay(absl::string_view contents, std::map<std::string, Role>& roles) {
  std::vector<absl::string_view> lines = absl::StrSplit(contents, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  bool started = false;
  std::string speaker;  // empty: none in force
  int64_t depth = 0;
  int blank_run = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const PlayLine line = SplitPlayLine(lines[i]);
    if (!line.blank && IsHeader(line.field)) {
      // Only a SCENE line ends the cast list; an ACT line there is not one.
      if (absl::StartsWith(line.field, "SCENE")) started = true;
      speaker.clear();
      depth = 0;
      blank_run = 0;
      continue;
    }
    if (!started) continue;
    if (line.blank) {
      depth = 0;
      if (++blank_run >= 2) speaker.clear();
      continue;
    }
    blank_run = 0;
    absl::string_view name, text;
    if (line.has_tab) {
      name = SpeakerName(line.field);
      text = line.text;
      if (!name.empty() && i > 0 && IsNameFragment(lines, i - 1)) {
        speaker = absl::StrCat(SplitPlayLine(lines[i - 1]).field, " ", name);
      } else if (!name.empty()) {
        speaker = std::string(name);
      }
    } else if (SplitColonLine(line, name, text)) {
      speaker = std::string(name);
    } else {
      continue;  // a wrapped name's first part (used above) or a stray line
    }
    text = absl::StripAsciiWhitespace(text);
    absl::ConsumePrefix(&text, "|");
    std::string spoken = StripDirections(text, depth);
    if (spoken.empty() || speaker.empty()) continue;
    Role& role = roles[speaker];
    ++role.lines;
    absl::StrAppend(&role.text, spoken, "\n");
  }
  return started;
}

// The first line of `contents` that is not text, as an error naming `path`
// and the line; OK when all of it is text.
absl::Status CheckPlayText(absl::string_view contents, const std::string& path) {
  if (CheckText(contents, "").ok()) return absl::OkStatus();
  int64_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_no;
    FEDPERS_RETURN_IF_ERROR(CheckText(line, absl::StrCat("shakespeare: '", path, "' line ", line_no)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Corpus> LoadShakespeare(const std::string& dir, int64_t min_lines,
                                       const CorpusOptions& options) {
  if (min_lines < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shakespeare: min_lines must be at least 1, not ", min_lines));
  }
  Corpus corpus;
  corpus.spec = absl::StrCat("shakespeare:", dir, ",min_lines=", min_lines);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("shakespeare: '", dir, "' is not a directory"));
  }
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".txt") files.push_back(entry.path());
  }
  if (ec) return absl::InternalError(absl::StrCat("shakespeare: cannot list '", dir, "': ", ec.message()));
  if (files.empty()) return absl::NotFoundError(absl::StrCat("shakespeare: no *.txt files in '", dir, "'"));
  std::sort(files.begin(), files.end());

  // A bad file is one record: its first bad line fails the load, or under
  // skip_bad_records the whole play is skipped, so no role keeps a text with
  // a silent gap.
  auto reject = [&](absl::Status error) {
    if (!options.skip_bad_records) return error;
    corpus.problems.emplace_back(error.message());
    return absl::OkStatus();
  };
  std::map<std::string, Role> by_user;
  int64_t without_scene = 0;
  for (const fs::path& path : files) {
    absl::StatusOr<std::string> contents = ReadFileToString(path.string(), options.max_record_bytes);
    if (!contents.ok()) {
      FEDPERS_RETURN_IF_ERROR(reject(contents.status()));
      continue;
    }
    if (absl::Status s = CheckPlayText(*contents, path.string()); !s.ok()) {
      FEDPERS_RETURN_IF_ERROR(reject(s));
      continue;
    }
    std::map<std::string, Role> roles;
    if (!ParsePlay(*contents, roles)) ++without_scene;
    const std::string play = path.stem().string();
    for (auto& [name, role] : roles) by_user[absl::StrCat(play, "/", name)] = std::move(role);
  }

  int64_t too_few_lines = 0;
  int64_t too_few_bytes = 0;
  int64_t unusable_ids = 0;
  for (auto& [id, role] : by_user) {
    if (!CheckUserId(id, "role").ok()) {
      ++unusable_ids;  // a file or role name with control characters, or over 256 bytes
    } else if (role.lines < min_lines) {
      ++too_few_lines;
    } else if (role.text.size() < options.min_user_bytes) {
      ++too_few_bytes;
    } else {
      corpus.users.push_back({id, std::move(role.text)});  // in id order: by_user is a map
    }
  }
  if (too_few_lines > 0) {
    corpus.problems.push_back(
        absl::StrCat("shakespeare: ", too_few_lines, " roles with fewer than ", min_lines, " lines dropped"));
  }
  if (too_few_bytes > 0) {
    corpus.problems.push_back(absl::StrCat("shakespeare: ", too_few_bytes, " roles with fewer than ",
                                           options.min_user_bytes, " bytes dropped"));
  }
  if (unusable_ids > 0) {
    corpus.problems.push_back(
        absl::StrCat("shakespeare: ", unusable_ids,
                     " roles dropped: their play/role names cannot be user ids (control "
                     "characters, or over 256 bytes)"));
  }
  if (corpus.users.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("shakespeare: no role with at least ", min_lines,
                                                   " lines in '", dir, "' (", files.size(), " files, ",
                                                   without_scene, " without a SCENE line)"));
  }
  return corpus;
}

}  // namespace fedpers
