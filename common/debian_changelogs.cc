// The debian-changelogs corpus: every Debian/Ubuntu machine carries
// /usr/share/doc/<pkg>/changelog.Debian.gz, a record of who wrote which change.
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/corpus.h"
#include "common/status.h"
#include "common/utf8.h"

namespace fedpers {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> Gunzip(const std::string& path, size_t max_bytes) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  std::string out;
  char buf[1 << 15];
  while (true) {
    int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      return absl::DataLossError(absl::StrCat("'", path, "': ", msg));
    }
    // zlib reads a file that is not gzip as plain bytes, and an empty file as
    // no bytes; either is a damaged changelog.Debian.gz.
    if (n == 0 && out.empty() && gzdirect(f)) {
      gzclose(f);
      return absl::DataLossError(absl::StrCat("'", path, "' is empty (not gzip data)"));
    }
    if (n == 0) break;
    if (out.empty() && gzdirect(f)) {
      gzclose(f);
      return absl::DataLossError(absl::StrCat("'", path, "' is not gzip data"));
    }
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      gzclose(f);
      return absl::ResourceExhaustedError(absl::StrCat("'", path, "' unpacks to over ", max_bytes, " bytes"));
    }
  }
  // A truncated stream ends with the data read so far and Z_BUF_ERROR.
  int err = Z_OK;
  const std::string msg = gzerror(f, &err);
  gzclose(f);
  if (err != Z_OK) return absl::DataLossError(absl::StrCat("'", path, "': ", msg));
  return out;
}

int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// Seconds since the epoch of an RFC 2822 date ("Fri, 03 Apr 2026 14:29:32 +0200"),
// or -1 when it does not parse.
int64_t ParseRfc2822(absl::string_view date) {
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  if (size_t comma = date.find(','); comma != absl::string_view::npos) date.remove_prefix(comma + 1);
  std::vector<absl::string_view> f = absl::StrSplit(date, ' ', absl::SkipEmpty());
  if (f.size() < 4) return -1;
  int day, year;
  if (!absl::SimpleAtoi(f[0], &day) || !absl::SimpleAtoi(f[2], &year)) return -1;
  unsigned month = 0;
  for (unsigned i = 0; i < 12; ++i) {
    if (f[1] == kMonths[i]) month = i + 1;
  }
  if (month == 0 || day < 1 || day > 31) return -1;
  std::vector<absl::string_view> hms = absl::StrSplit(f[3], ':');
  int h = 0, mi = 0, s = 0;
  if (hms.size() < 2 || !absl::SimpleAtoi(hms[0], &h) || !absl::SimpleAtoi(hms[1], &mi)) return -1;
  if (hms.size() > 2 && !absl::SimpleAtoi(hms[2], &s)) return -1;
  int64_t t = DaysFromCivil(year, month, static_cast<unsigned>(day)) * 86400 + h * 3600 + mi * 60 + s;
  if (f.size() > 4 && f[4].size() == 5 && (f[4][0] == '+' || f[4][0] == '-')) {
    int zone;
    if (absl::SimpleAtoi(f[4].substr(1), &zone)) {
      const int offset = (zone / 100) * 3600 + (zone % 100) * 60;
      t += f[4][0] == '+' ? -offset : offset;
    }
  }
  return t;
}

struct Entry {
  std::string author;  // e-mail, lower-case
  int64_t time;
  std::string text;
};

// Splits one changelog into entries. An entry runs from its header line
// "pkg (version) dists; urgency=..." to its trailer " -- Name <email>  date".
void ParseChangelog(absl::string_view log, std::set<std::pair<std::string, std::string>>& seen,
                    std::vector<Entry>& entries, int64_t& invalid) {
  std::string package, version, body;
  bool in_entry = false;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (!in_entry) {
      if (line.empty() || line[0] == ' ' || line[0] == '\t') continue;
      const size_t open = line.find(" (");
      const size_t close = line.find(')', open == absl::string_view::npos ? 0 : open);
      if (open == absl::string_view::npos || close == absl::string_view::npos) continue;
      package = std::string(line.substr(0, open));
      version = std::string(line.substr(open + 2, close - open - 2));
      body = std::string(line);
      body += '\n';
      in_entry = true;
      continue;
    }
    if (absl::StartsWith(line, " -- ")) {
      in_entry = false;
      const size_t lt = line.find('<');
      const size_t gt = line.find('>', lt == absl::string_view::npos ? 0 : lt);
      if (lt == absl::string_view::npos || gt == absl::string_view::npos) continue;
      std::string author = absl::AsciiStrToLower(line.substr(lt + 1, gt - lt - 1));
      const int64_t time = ParseRfc2822(absl::StripAsciiWhitespace(line.substr(gt + 1)));
      if (author.empty() || !seen.insert({package, version}).second) continue;
      while (!body.empty() && (body.back() == '\n' || body.back() == ' ')) body.pop_back();
      body += '\n';
      // Old changelogs in Latin-1; an address that cannot be a user id.
      if (!CheckText(body, "entry").ok() || !CheckUserId(author, "maintainer").ok()) {
        ++invalid;
        continue;
      }
      entries.push_back({std::move(author), time, std::move(body)});
      body.clear();
      continue;
    }
    body.append(line.data(), line.size());
    body += '\n';
  }
}

}  // namespace

absl::StatusOr<Corpus> LoadDebianChangelogs(const std::string& doc_dir, const CorpusOptions& options) {
  Corpus corpus;
  corpus.spec = "debian-changelogs:" + doc_dir;
  std::error_code ec;
  if (!fs::is_directory(doc_dir, ec)) {
    return absl::NotFoundError(absl::StrCat("debian-changelogs: '", doc_dir, "' is not a directory"));
  }
  std::vector<fs::path> logs;
  for (const auto& pkg : fs::directory_iterator(doc_dir, ec)) {
    fs::path p = pkg.path() / "changelog.Debian.gz";
    // Several binary packages of one source often symlink the same log.
    if (fs::is_regular_file(p, ec)) logs.push_back(p);
  }
  std::sort(logs.begin(), logs.end());
  std::set<std::pair<std::string, std::string>> seen;
  std::vector<Entry> entries;
  int64_t invalid = 0;
  for (const fs::path& p : logs) {
    absl::StatusOr<std::string> log = Gunzip(p.string(), options.max_record_bytes);
    if (!log.ok()) {
      // As for any corpus: an error naming the file, or with
      // skip_bad_records one problem line.
      if (!options.skip_bad_records) {
        return absl::Status(log.status().code(),
                            absl::StrCat("debian-changelogs: ", log.status().message(),
                                         " (skip_bad_records / --skip-bad skips the file)"));
      }
      corpus.problems.emplace_back(log.status().message());
      continue;
    }
    ParseChangelog(*log, seen, entries, invalid);
  }
  if (invalid > 0) {
    corpus.problems.push_back(
        absl::StrCat(invalid,
                     " changelog entries skipped: not UTF-8 text, or a maintainer address with control "
                     "characters"));
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.author, a.time) < std::tie(b.author, b.time);
  });
  std::map<std::string, std::string> by_user;
  for (Entry& e : entries) by_user[e.author] += e.text;
  std::map<std::string, std::string> kept;
  for (auto& [id, text] : by_user) {
    if (text.size() >= options.min_user_bytes) kept[id] = std::move(text);
  }
  const size_t dropped = by_user.size() - kept.size();
  if (dropped > 0) {
    corpus.problems.push_back(absl::StrCat(dropped, " maintainers with fewer than ",
                                           options.min_user_bytes, " bytes dropped"));
  }
  for (auto& [id, text] : kept) corpus.users.push_back({id, std::move(text)});
  if (corpus.users.empty()) {
    return absl::NotFoundError(absl::StrCat("debian-changelogs: no changelog entries under '", doc_dir, "'"));
  }
  return corpus;
}

}  // namespace fedpers
