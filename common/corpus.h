// Per-user text corpora. A corpus is a list of users, each with one text in
// time order; every reader yields that shape, so training and federation
// code never knows where the text came from.
//
// Specs (the --data / --corpus argument):
//   txt:DIR                       every *.txt file of DIR is one user (id = file stem)
//   jsonl:FILE                    lines {"user_id": ..., "text": ...}; a user's lines
//                                 are concatenated in file order
//   debian-changelogs[:DOCDIR]    /usr/share/doc/*/changelog.Debian.gz: each maintainer
//                                 is a user; entries deduplicated by (package, version)
//                                 and ordered by date
//   shakespeare:DIR[,min_lines=N] the Moby Shakespeare, one *.txt file per play: each
//                                 (play, role) is a user, id "<file stem>/<ROLE>", as in
//                                 the LEAF benchmark; roles with fewer than N lines
//                                 (default 64) are dropped
//   synthetic[:users=N,bytes=B,seed=S]   generated users with distinct styles, for tests
// A plain path is read as txt: when it is a directory and jsonl: when it ends
// in .jsonl.
#ifndef FEDPERS_COMMON_CORPUS_H_
#define FEDPERS_COMMON_CORPUS_H_

#include "absl/strings/string_view.h"
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fedpers {

// The spec forms above, as help texts and errors list them.
inline constexpr char kCorpusSpecForms[] =
    "txt:DIR, jsonl:FILE, debian-changelogs[:DOCDIR], shakespeare:DIR[,min_lines=N], "
    "synthetic[:users=N,bytes=B,seed=S]";

struct UserText {
  std::string user_id;
  std::string text;
};

struct Corpus {
  std::string spec;
  std::vector<UserText> users;  // sorted by user_id
  // Records skipped under skip_bad_records, one line each ("line 7: ...").
  std::vector<std::string> problems;
  int64_t total_bytes() const;
  // The user with this id, or nullptr.
  const UserText* Find(absl::string_view user_id) const;
};

struct CorpusOptions {
  // false: the first bad record (invalid UTF-8, binary bytes, malformed JSON,
  // a missing field, an over-long line) fails the load with an error naming
  // it. true: bad records are skipped and listed in Corpus::problems.
  bool skip_bad_records = false;
  // Longest accepted record (a jsonl line or a txt file).
  size_t max_record_bytes = size_t{64} << 20;
  // Users with less text than this are dropped (and listed in problems).
  size_t min_user_bytes = 1;
};

// Loads the corpus named by `spec`. Errors name the spec, file and line. A
// corpus with no users left is an InvalidArgument error.
absl::StatusOr<Corpus> LoadCorpus(absl::string_view spec, const CorpusOptions& options = {});

// A user's text split in time order: the first `train_fraction` of the bytes
// for training, the rest for testing. The cut moves forward to the next line
// start (if any lies within the last 10% of the train part's length) so that
// a line is not split. train_fraction in (0, 1).
struct TextSplit {
  absl::string_view train;
  absl::string_view test;
};
TextSplit SplitTrainTest(absl::string_view text, double train_fraction = 0.8);

// Generates `num_users` users of about `bytes_per_user` bytes. Each user has
// a private vocabulary and word-transition table, so a model adapted to one
// user predicts that user's text much better than another's. Deterministic
// in `seed`.
std::vector<UserText> SyntheticUsers(int num_users, size_t bytes_per_user, uint64_t seed);

// Reads the Debian changelog corpus from `doc_dir` (see spec above).
absl::StatusOr<Corpus> LoadDebianChangelogs(const std::string& doc_dir, const CorpusOptions& options);

// The min_lines of a shakespeare:DIR spec that does not name one.
inline constexpr int64_t kShakespeareDefaultMinLines = 64;

// Reads the Moby Shakespeare from `dir` (see spec above; the layout rules are
// in shakespeare.cc). A user's text is the role's spoken lines in play order,
// stage directions removed, each line ending in '\n', so SplitTrainTest cuts
// it in time. A line is a speaker line or a continuation line with text left
// after removing directions. Files without a SCENE line (the poems: sonnets,
// various, venusandadonis, rapeoflucrece, loverscomplaint) yield no users.
// Roles with fewer than `min_lines` (>= 1) lines or fewer than
// options.min_user_bytes bytes are dropped, counted in one problems line
// each. A file that is not UTF-8 text is an error naming it and the line; under
// skip_bad_records the whole file is skipped and listed in problems. NotFound
// when `dir` is not a directory or holds no *.txt file; InvalidArgument when no
// role is left.
absl::StatusOr<Corpus> LoadShakespeare(const std::string& dir, int64_t min_lines,
                                       const CorpusOptions& options);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_CORPUS_H_
