#include "common/corpus.h"

#include <algorithm>
#include <array>
#include <limits>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/atomic_file.h"
#include "common/host_memory.h"
#include "common/portable_prg.h"
#include "common/status.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

namespace fs = std::filesystem;

// Records one bad record: an error when not skipping, else a problem line.
absl::Status Reject(const CorpusOptions& options, Corpus& corpus, absl::Status error) {
  if (!options.skip_bad_records) return error;
  corpus.problems.emplace_back(error.message());
  return absl::OkStatus();
}

absl::Status Finalize(std::map<std::string, std::string> by_user, const CorpusOptions& options,
                      Corpus& corpus) {
  for (auto& [id, text] : by_user) {
    // Ids travel to coordinators and terminals (CheckUserId); the id is shown
    // escaped so that the message itself is safe.
    if (absl::Status s = CheckUserId(id, absl::StrCat(corpus.spec, ": user '", EscapeForTerminal(id), "'"));
        !s.ok()) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, s));
      continue;
    }
    if (text.size() < options.min_user_bytes) {
      corpus.problems.push_back(absl::StrCat("user '", id, "': ", text.size(),
                                             " bytes of text, fewer than the minimum ",
                                             options.min_user_bytes, "; dropped"));
      continue;
    }
    corpus.users.push_back({id, std::move(text)});
  }
  if (corpus.users.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("corpus '", corpus.spec, "' has no users with text",
                                                   corpus.problems.empty() ? "" : " (",
                                                   corpus.problems.empty() ? "" : corpus.problems.front(),
                                                   corpus.problems.empty() ? "" : ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Corpus> LoadTxtDir(const std::string& dir, const CorpusOptions& options) {
  Corpus corpus;
  corpus.spec = "txt:" + dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("txt corpus: '", dir, "' is not a directory"));
  }
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".txt") files.push_back(entry.path());
  }
  if (ec) return absl::InternalError(absl::StrCat("txt corpus: cannot list '", dir, "': ", ec.message()));
  std::sort(files.begin(), files.end());
  std::map<std::string, std::string> by_user;
  for (const fs::path& path : files) {
    absl::StatusOr<std::string> text = ReadFileToString(path.string(), options.max_record_bytes);
    if (!text.ok()) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, text.status()));
      continue;
    }
    if (absl::Status s = CheckText(*text, absl::StrCat("file '", path.string(), "'")); !s.ok()) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, s));
      continue;
    }
    by_user[path.stem().string()] = std::move(*text);
  }
  FEDPERS_RETURN_IF_ERROR(Finalize(std::move(by_user), options, corpus));
  return corpus;
}

absl::StatusOr<Corpus> LoadJsonl(const std::string& path, const CorpusOptions& options) {
  Corpus corpus;
  corpus.spec = "jsonl:" + path;
  // A directory reads as empty and a device (/dev/zero) never ends.
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec)) {
    const char* what = std::filesystem::is_directory(path, ec) ? "a directory" : "not a regular file";
    return absl::InvalidArgumentError(absl::StrCat("jsonl corpus: '", path, "' is ", what, " (give a .jsonl file)"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("jsonl corpus: cannot open '", path, "'"));
  std::map<std::string, std::string> by_user;
  std::string line;
  int64_t line_no = 0;
  char buf[1 << 16];
  bool eof = false;
  while (!eof) {
    // Reads one line without ever holding more than max_record_bytes of it.
    line.clear();
    bool too_long = false;
    size_t line_bytes = 0;
    while (true) {
      int c = in.get();
      if (c == EOF) {
        eof = true;
        break;
      }
      if (c == '\n') break;
      ++line_bytes;
      if (line_bytes > options.max_record_bytes) {
        too_long = true;
        in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
        if (in.eof()) eof = true;
        break;
      }
      line.push_back(static_cast<char>(c));
      (void)buf;
    }
    ++line_no;
    if (eof && line.empty() && !too_long) break;
    auto where = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("jsonl '", path, "' line ", line_no, ": ", why));
    };
    if (too_long) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, where(absl::StrCat(
          "longer than the limit of ", options.max_record_bytes, " bytes"))));
      continue;
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank line
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      const size_t bad = FindInvalidUtf8(line);
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, where(
          bad != std::string::npos ? absl::StrCat("invalid UTF-8 at byte ", bad) : "not valid JSON")));
      continue;
    }
    if (!j.is_object()) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, where("not a JSON object")));
      continue;
    }
    std::string user;
    if (j.contains("user_id") && j["user_id"].is_string()) {
      user = j["user_id"].get<std::string>();
    } else if (j.contains("user_id") && j["user_id"].is_number_integer()) {
      user = j["user_id"].dump();
    }
    if (user.empty()) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, where("needs a non-empty string or integer 'user_id'")));
      continue;
    }
    if (absl::Status s = CheckUserId(user, "'user_id'"); !s.ok()) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, where(s.message())));
      continue;
    }
    if (!j.contains("text") || !j["text"].is_string()) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, where("needs a string field 'text'")));
      continue;
    }
    std::string text = j["text"].get<std::string>();
    if (absl::Status s = CheckText(text, "text"); !s.ok()) {
      FEDPERS_RETURN_IF_ERROR(Reject(options, corpus, where(s.message())));
      continue;
    }
    std::string& dest = by_user[user];
    if (!dest.empty() && !text.empty()) dest.push_back('\n');
    dest += text;
  }
  FEDPERS_RETURN_IF_ERROR(Finalize(std::move(by_user), options, corpus));
  return corpus;
}

absl::StatusOr<Corpus> LoadSynthetic(absl::string_view args, const CorpusOptions& options) {
  int users = 8;
  int64_t bytes = 6000;
  uint64_t seed = 1;
  if (!args.empty()) {
    for (absl::string_view kv : absl::StrSplit(args, ',')) {
      std::pair<absl::string_view, absl::string_view> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      bool ok = false;
      if (p.first == "users") ok = absl::SimpleAtoi(p.second, &users) && users > 0 && users <= 100000;
      else if (p.first == "bytes") ok = absl::SimpleAtoi(p.second, &bytes) && bytes > 0 && bytes <= (1 << 26);
      else if (p.first == "seed") ok = absl::SimpleAtoi(p.second, &seed);
      if (!ok) {
        return absl::InvalidArgumentError(absl::StrCat(
            "synthetic corpus: bad argument '", kv, "' (expected users=N,bytes=B,seed=S)"));
      }
    }
  }
  const double text_bytes = static_cast<double>(users) * static_cast<double>(bytes);
  if (const int64_t available = AvailableMemoryBytes(); available > 0 && text_bytes > static_cast<double>(available)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "synthetic corpus: %d users x %d bytes is %.1f GiB of text, more than the %.1f GiB of memory available",
        users, bytes, text_bytes / (1 << 30), static_cast<double>(available) / (1 << 30)));
  }
  Corpus corpus;
  corpus.spec = absl::StrCat("synthetic:users=", users, ",bytes=", bytes, ",seed=", seed);
  // Through the same filter as every other corpus (--min-bytes).
  std::map<std::string, std::string> by_user;
  for (UserText& u : SyntheticUsers(users, static_cast<size_t>(bytes), seed)) by_user[u.user_id] = std::move(u.text);
  if (absl::Status s = Finalize(std::move(by_user), options, corpus); !s.ok()) return s;
  return corpus;
}

// Parses the arguments of shakespeare:DIR[,min_lines=N]. The last comma
// starts an option only when an '=' follows it, so a directory name may
// itself contain commas.
absl::StatusOr<Corpus> LoadShakespeareSpec(absl::string_view args, const CorpusOptions& options) {
  int64_t min_lines = kShakespeareDefaultMinLines;
  const size_t comma = args.rfind(',');
  if (comma != absl::string_view::npos && args.find('=', comma) != absl::string_view::npos) {
    const absl::string_view option = args.substr(comma + 1);
    absl::string_view value = option;
    if (!absl::ConsumePrefix(&value, "min_lines=") || !absl::SimpleAtoi(value, &min_lines) || min_lines < 1) {
      return absl::InvalidArgumentError(absl::StrCat("shakespeare corpus: bad argument '", option,
                                                     "' (expected shakespeare:DIR[,min_lines=N], N >= 1)"));
    }
    args = args.substr(0, comma);
  }
  if (args.empty()) {
    return absl::InvalidArgumentError(
        "shakespeare corpus: needs a directory (shakespeare:DIR[,min_lines=N])");
  }
  return LoadShakespeare(std::string(args), min_lines, options);
}

}  // namespace

int64_t Corpus::total_bytes() const {
  int64_t n = 0;
  for (const UserText& u : users) n += static_cast<int64_t>(u.text.size());
  return n;
}

const UserText* Corpus::Find(absl::string_view user_id) const {
  auto it = std::lower_bound(users.begin(), users.end(), user_id,
                             [](const UserText& u, absl::string_view id) { return u.user_id < id; });
  return it != users.end() && it->user_id == user_id ? &*it : nullptr;
}

absl::StatusOr<Corpus> LoadCorpus(absl::string_view spec, const CorpusOptions& options) {
  absl::StatusOr<Corpus> result;
  if (absl::StartsWith(spec, "txt:")) {
    result = LoadTxtDir(std::string(spec.substr(4)), options);
  } else if (absl::StartsWith(spec, "jsonl:")) {
    result = LoadJsonl(std::string(spec.substr(6)), options);
  } else if (spec == "debian-changelogs" || absl::StartsWith(spec, "debian-changelogs:")) {
    std::string dir = spec.size() > 18 ? std::string(spec.substr(18)) : "/usr/share/doc";
    result = LoadDebianChangelogs(dir, options);
  } else if (spec == "shakespeare" || absl::StartsWith(spec, "shakespeare:")) {
    result = LoadShakespeareSpec(spec.size() > 12 ? spec.substr(12) : "", options);
  } else if (spec == "synthetic" || absl::StartsWith(spec, "synthetic:")) {
    result = LoadSynthetic(spec.size() > 10 ? spec.substr(10) : "", options);
  } else {
    std::error_code ec;
    if (fs::is_directory(std::string(spec), ec)) {
      result = LoadTxtDir(std::string(spec), options);
    } else if (absl::EndsWith(spec, ".jsonl")) {
      result = LoadJsonl(std::string(spec), options);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown corpus spec '", spec,
          "' (expected one of ", kCorpusSpecForms, ")"));
    }
  }
  if (!result.ok()) return result.status();
  std::sort(result->users.begin(), result->users.end(),
            [](const UserText& a, const UserText& b) { return a.user_id < b.user_id; });
  return result;
}

TextSplit SplitTrainTest(absl::string_view text, double train_fraction) {
  train_fraction = std::clamp(train_fraction, 0.0, 1.0);
  size_t cut = static_cast<size_t>(static_cast<double>(text.size()) * train_fraction);
  cut = std::min(cut, text.size());
  const size_t slack = cut / 10;
  const size_t nl = text.find('\n', cut);
  if (nl != absl::string_view::npos && nl + 1 - cut <= slack && nl + 1 < text.size()) {
    cut = nl + 1;
  } else {
    // Never cut inside a UTF-8 sequence.
    while (cut < text.size() && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) ++cut;
  }
  return {text.substr(0, cut), text.substr(cut)};
}

std::vector<UserText> SyntheticUsers(int num_users, size_t bytes_per_user, uint64_t seed) {
  std::vector<UserText> users;
  users.reserve(static_cast<size_t>(num_users));
  constexpr int kWords = 24;
  for (int u = 0; u < num_users; ++u) {
    PortablePrg prg(seed, absl::StrCat("synthetic-user-", u));
    // A private alphabet of 8 letters and a vocabulary built from it.
    std::string letters = "abcdefghijklmnopqrstuvwxyz";
    for (size_t i = letters.size() - 1; i > 0; --i) std::swap(letters[i], letters[prg.NextBelow(i + 1)]);
    letters.resize(8);
    std::vector<std::string> words(kWords);
    for (std::string& w : words) {
      const size_t len = 2 + prg.NextBelow(6);
      for (size_t i = 0; i < len; ++i) w.push_back(letters[prg.NextBelow(letters.size())]);
    }
    // Each word has 3 likely successors: text is predictable once learned.
    std::vector<std::array<int, 3>> next(kWords);
    for (auto& n : next) {
      for (int& k : n) k = static_cast<int>(prg.NextBelow(kWords));
    }
    std::string text;
    int w = 0;
    int in_sentence = 0;
    while (text.size() < bytes_per_user) {
      text += words[static_cast<size_t>(w)];
      ++in_sentence;
      if (in_sentence >= 6 && prg.NextBelow(4) == 0) {
        text += ".\n";
        in_sentence = 0;
      } else {
        text += ' ';
      }
      w = prg.NextBelow(10) < 9 ? next[static_cast<size_t>(w)][prg.NextBelow(3)]
                                : static_cast<int>(prg.NextBelow(kWords));
    }
    char id[32];
    std::snprintf(id, sizeof(id), "user%04d", u);
    users.push_back({id, std::move(text)});
  }
  return users;
}

}  // namespace fedpers
