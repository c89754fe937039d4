#include "common/corpus.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "common/utf8.h"

namespace fedpers {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  std::string dir = ::testing::TempDir() + "/corpus_" + name + "_" + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void Write(const std::string& path, const std::string& contents) {
  std::ofstream(path, std::ios::binary) << contents;
}

TEST(CorpusTest, TxtDirectoryGivesOneUserPerFile) {
  std::string dir = TempDir("txt");
  Write(dir + "/alice.txt", "first line\nsecond line\n");
  Write(dir + "/bob.txt", "héllo wörld\n");
  Write(dir + "/notes.md", "ignored");
  absl::StatusOr<Corpus> c = LoadCorpus("txt:" + dir);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->users.size(), 2u);
  EXPECT_EQ(c->users[0].user_id, "alice");
  EXPECT_EQ(c->users[1].text, "héllo wörld\n");
  EXPECT_EQ(c->Find("bob"), &c->users[1]);
  EXPECT_EQ(c->Find("carol"), nullptr);
  EXPECT_TRUE(LoadCorpus(dir).ok()) << "a plain directory path reads as txt:";
}

TEST(CorpusTest, InvalidUtf8AndBinaryAreNamedErrors) {
  std::string dir = TempDir("bad");
  Write(dir + "/good.txt", "fine\n");
  Write(dir + "/latin1.txt", "caf\xe9\n");
  absl::StatusOr<Corpus> c = LoadCorpus("txt:" + dir);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("latin1.txt': invalid UTF-8 at byte 3"), absl::string_view::npos) << c.status();
  Write(dir + "/latin1.txt", std::string("ab\0cd", 5));
  c = LoadCorpus("txt:" + dir);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("binary data (byte 0x00 at offset 2)"), absl::string_view::npos) << c.status();
  CorpusOptions skip;
  skip.skip_bad_records = true;
  c = LoadCorpus("txt:" + dir, skip);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->users.size(), 1u);
  EXPECT_EQ(c->problems.size(), 1u);
  EXPECT_EQ(FindInvalidUtf8("\xc0\xaf"), 0u) << "overlong encoding";
  EXPECT_EQ(FindInvalidUtf8("ok\xed\xa0\x80"), 2u) << "surrogate";
  EXPECT_EQ(FindInvalidUtf8("\xf0\x9f\x98\x80 ok"), std::string::npos);
}

TEST(CorpusTest, JsonlConcatenatesInOrderAndNamesBadLines) {
  std::string dir = TempDir("jsonl");
  std::string path = dir + "/data.jsonl";
  Write(path,
        "{\"user_id\": \"u1\", \"text\": \"one\"}\n"
        "{\"user_id\": 7, \"text\": \"seven\"}\n"
        "\n"
        "{\"user_id\": \"u1\", \"text\": \"two\"}\r\n");
  absl::StatusOr<Corpus> c = LoadCorpus("jsonl:" + path);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->users.size(), 2u);
  EXPECT_EQ(c->Find("u1")->text, "one\ntwo");
  EXPECT_EQ(c->Find("7")->text, "seven");

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{\"user_id\": \"u\", \"text\": \"x\"}\n{oops\n", "line 2: not valid JSON"},
      {"[1]\n", "line 1: not a JSON object"},
      {"{\"text\": \"x\"}\n", "line 1: needs a non-empty string or integer 'user_id'"},
      {"{\"user_id\": \"\", \"text\": \"x\"}\n", "user_id"},
      {"{\"user_id\": \"u\"}\n", "line 1: needs a string field 'text'"},
      {"{\"user_id\": \"u\", \"text\": 5}\n", "needs a string field 'text'"},
      {"{\"user_id\": \"u\", \"text\": \"a\\u0000b\"}\n", "binary data"},
      {"{\"user_id\": \"u\", \"text\": \"caf\xe9\"}\n", "line 1: invalid UTF-8"},
      {"{\"user_id\": \"u\\t2\", \"text\": \"x\"}\n",
       "line 1: 'user_id': a user id must not contain control characters (byte 0x09 at offset 1)"},
      {"{\"user_id\": \"" + std::string(257, 'u') + "\", \"text\": \"x\"}\n",
       "line 1: 'user_id': a user id must be 1-256"},
  };
  for (const auto& [contents, expected] : bad) {
    Write(path, contents);
    absl::StatusOr<Corpus> r = LoadCorpus(path);
    ASSERT_FALSE(r.ok()) << contents;
    EXPECT_NE(r.status().message().find(expected), absl::string_view::npos) << r.status();
  }
}

// Every loader's ids pass CheckUserId (here a file name with an ESC, as a
// txt corpus takes ids from file names): an error naming the corpus and the
// id escaped, or with skip_bad_records a problem line while the rest load.
TEST(CorpusTest, UserIdsATerminalWouldActOnAreRefused) {
  std::string dir = TempDir("ids");
  Write(dir + "/alice.txt", "hello");
  Write(dir + "/ev\x1b[2Jil.txt", "hello");
  absl::StatusOr<Corpus> strict = LoadCorpus("txt:" + dir);
  ASSERT_EQ(strict.status().code(), absl::StatusCode::kInvalidArgument) << strict.status();
  EXPECT_NE(
      strict.status().message().find("user 'ev\\x1b[2Jil': a user id must not contain control characters"),
      absl::string_view::npos)
      << strict.status();
  CorpusOptions skip;
  skip.skip_bad_records = true;
  absl::StatusOr<Corpus> c = LoadCorpus("txt:" + dir, skip);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->users.size(), 1u);
  EXPECT_EQ(c->users[0].user_id, "alice");
  ASSERT_EQ(c->problems.size(), 1u);
  EXPECT_EQ(c->problems[0].find('\x1b'), std::string::npos) << "the problem line is safe to print";
}

TEST(CorpusTest, JsonlSkipsHugeAndBadLinesWhenAsked) {
  std::string dir = TempDir("huge");
  std::string path = dir + "/data.jsonl";
  std::string huge = "{\"user_id\": \"big\", \"text\": \"" + std::string(5000, 'x') + "\"}\n";
  Write(path, "{\"user_id\": \"a\", \"text\": \"hello\"}\n" + huge + "garbage\n{\"user_id\": \"e\", \"text\": \"\"}\n");
  CorpusOptions o;
  o.max_record_bytes = 1000;
  absl::StatusOr<Corpus> strict = LoadCorpus(path, o);
  ASSERT_FALSE(strict.ok());
  EXPECT_NE(strict.status().message().find("line 2: longer than the limit of 1000 bytes"), absl::string_view::npos)
      << strict.status();
  o.skip_bad_records = true;
  absl::StatusOr<Corpus> c = LoadCorpus(path, o);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->users.size(), 1u);
  EXPECT_EQ(c->users[0].user_id, "a");
  ASSERT_EQ(c->problems.size(), 3u);  // huge line, garbage line, empty user
  EXPECT_NE(c->problems[1].find("line 3"), std::string::npos);
  EXPECT_NE(c->problems[2].find("user 'e'"), std::string::npos);

  Write(path, "");
  EXPECT_NE(LoadCorpus(path).status().message().find("no users"), absl::string_view::npos);
  EXPECT_EQ(LoadCorpus("jsonl:/nonexistent.jsonl").status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(LoadCorpus("ftp://x").status().message().find("unknown corpus spec"), absl::string_view::npos);
}

// Neither a directory nor a device is read as a jsonl file: one reads as
// empty, the other (/dev/zero) never ends.
TEST(CorpusTest, JsonlNeedsARegularFile) {
  absl::StatusOr<Corpus> dir = LoadCorpus("jsonl:" + ::testing::TempDir());
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find("is a directory"), absl::string_view::npos) << dir.status();
  absl::StatusOr<Corpus> device = LoadCorpus("jsonl:/dev/zero");
  ASSERT_FALSE(device.ok());
  EXPECT_NE(device.status().message().find("'/dev/zero' is not a regular file"), absl::string_view::npos)
      << device.status();
}

TEST(CorpusTest, SyntheticUsersAreDeterministicAndDistinct) {
  absl::StatusOr<Corpus> a = LoadCorpus("synthetic:users=3,bytes=2000,seed=5");
  absl::StatusOr<Corpus> b = LoadCorpus("synthetic:users=3,bytes=2000,seed=5");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->users.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(a->users[i].text, b->users[i].text);
    EXPECT_GE(a->users[i].text.size(), 2000u);
    EXPECT_TRUE(CheckText(a->users[i].text, "synthetic").ok());
  }
  EXPECT_NE(a->users[0].text, a->users[1].text);
  EXPECT_FALSE(LoadCorpus("synthetic:users=0").ok());
  EXPECT_FALSE(LoadCorpus("synthetic:colour=blue").ok());
  // The minimum per user applies as to any corpus.
  CorpusOptions strict;
  strict.min_user_bytes = a->users[0].text.size() + 1'000'000;
  absl::StatusOr<Corpus> none = LoadCorpus("synthetic:users=3,bytes=2000,seed=5", strict);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("fewer than the minimum"), absl::string_view::npos) << none.status();
  strict.min_user_bytes = 2000;
  EXPECT_EQ(LoadCorpus("synthetic:users=3,bytes=2000,seed=5", strict)->users.size(), 3u);
}

TEST(CorpusTest, SplitKeepsTimeOrderAndLines) {
  std::string text;
  for (int i = 0; i < 100; ++i) text += "line " + std::to_string(i) + "\n";
  TextSplit s = SplitTrainTest(text, 0.8);
  EXPECT_EQ(std::string(s.train) + std::string(s.test), text);
  EXPECT_EQ(s.train.back(), '\n');
  EXPECT_NEAR(static_cast<double>(s.train.size()) / text.size(), 0.8, 0.02);
  TextSplit u = SplitTrainTest("aaaaé", 0.9);  // never cuts inside a code point
  EXPECT_TRUE(CheckText(u.train, "t").ok());
  EXPECT_TRUE(CheckText(u.test, "t").ok());
}

bool ReadAll(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return static_cast<bool>(in) || in.eof();
}

void WriteGz(const std::string& path, const std::string& contents) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  gzwrite(f, contents.data(), static_cast<unsigned>(contents.size()));
  gzclose(f);
}

TEST(CorpusTest, DebianChangelogsGroupByMaintainerDedupAndOrderByDate) {
  std::string dir = TempDir("debian");
  fs::create_directories(dir + "/pkga");
  fs::create_directories(dir + "/pkga-dev");
  fs::create_directories(dir + "/pkgb");
  const std::string log_a =
      "pkga (2.0-1) unstable; urgency=medium\n\n  * Newer change by Ann.\n\n"
      " -- Ann Maint <ann@example.org>  Tue, 02 Jan 2024 10:00:00 +0000\n\n"
      "pkga (1.0-1) unstable; urgency=low\n\n  * Older change by Ann.\n\n"
      " -- Ann Maint <ANN@example.org>  Mon, 01 Jan 2018 10:00:00 +0100\n";
  WriteGz(dir + "/pkga/changelog.Debian.gz", log_a);
  WriteGz(dir + "/pkga-dev/changelog.Debian.gz", log_a);  // same entries again
  WriteGz(dir + "/pkgb/changelog.Debian.gz",
          "pkgb (0.5) unstable; urgency=low\n\n  * Bob's work.\n\n"
          " -- Bob <bob@example.org>  Wed, 03 Jan 2024 10:00:00 +0000\n"
          "pkgb (0.4) unstable; urgency=low\n\n  * caf\xe9 in Latin-1.\n\n"
          " -- Bob <bob@example.org>  Wed, 03 Jan 2023 10:00:00 +0000\n");
  absl::StatusOr<Corpus> c = LoadCorpus("debian-changelogs:" + dir);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->users.size(), 2u);
  const UserText* ann = c->Find("ann@example.org");
  ASSERT_NE(ann, nullptr);
  EXPECT_LT(ann->text.find("Older change"), ann->text.find("Newer change"));
  EXPECT_EQ(ann->text.find("Older change"), ann->text.rfind("Older change")) << "deduplicated";
  EXPECT_EQ(c->Find("bob@example.org")->text.find("Latin-1"), std::string::npos);
  EXPECT_FALSE(c->problems.empty());
  EXPECT_EQ(LoadCorpus("debian-changelogs:" + dir + "/none").status().code(), absl::StatusCode::kNotFound);

  // A damaged log is an error naming it, as for any corpus; with
  // skip_bad_records one problem line each, and the others still load.
  fs::create_directories(dir + "/pkgc");
  fs::create_directories(dir + "/pkgd");
  std::string whole;
  ASSERT_TRUE(ReadAll(dir + "/pkgb/changelog.Debian.gz", whole));
  std::ofstream(dir + "/pkgc/changelog.Debian.gz", std::ios::binary) << whole.substr(0, whole.size() / 2);
  std::ofstream(dir + "/pkgd/changelog.Debian.gz") << log_a;  // plain text under a .gz name
  fs::create_directories(dir + "/pkge");
  std::ofstream(dir + "/pkge/changelog.Debian.gz").flush();  // empty
  absl::StatusOr<Corpus> strict = LoadCorpus("debian-changelogs:" + dir);
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kDataLoss) << strict.status();
  EXPECT_NE(strict.status().message().find("pkgc/changelog.Debian.gz"), absl::string_view::npos) << strict.status();
  EXPECT_NE(strict.status().message().find("--skip-bad"), absl::string_view::npos) << strict.status();
  CorpusOptions skip;
  skip.skip_bad_records = true;
  absl::StatusOr<Corpus> skipped = LoadCorpus("debian-changelogs:" + dir, skip);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_EQ(skipped->users.size(), 2u);
  auto mentions = [&](const std::string& part) {
    return std::any_of(skipped->problems.begin(), skipped->problems.end(),
                       [&](const std::string& p) { return p.find(part) != std::string::npos; });
  };
  EXPECT_TRUE(mentions("pkgc/changelog.Debian.gz")) << "truncated";
  EXPECT_TRUE(mentions("pkgd/changelog.Debian.gz' is not gzip data"));
  EXPECT_TRUE(mentions("pkge/changelog.Debian.gz' is empty (not gzip data)"));
}

}  // namespace
}  // namespace fedpers
