#include "common/utf8.h"

#include <gtest/gtest.h>

#include "common/table.h"

namespace fedpers {
namespace {

TEST(CheckUserIdTest, AcceptsPrintableUtf8) {
  for (const char* id : {"alice", "KING LEAR", "J\xc3\xb6rg Example <jorg@example.org>",
                         "\xe6\x9d\x8e\xe9\x9b\xb7", "a\xf0\x9f\x98\x80"}) {
    EXPECT_TRUE(CheckUserId(id, "id").ok()) << id;
  }
  EXPECT_TRUE(CheckUserId(std::string(kMaxUserIdBytes, 'x'), "id").ok());
}

TEST(CheckUserIdTest, RefusesWhatATerminalWouldActOnWithoutEchoingIt) {
  struct Case {
    std::string id;
    std::string message_part;
  };
  const std::vector<Case> cases = {
      {"", "1-256 bytes (this one has 0)"},
      {std::string(kMaxUserIdBytes + 1, 'x'), "this one has 257"},
      {"ev\x1b[2Jil", "byte 0x1b at offset 2"},
      {"two\nlines", "byte 0x0a at offset 3"},
      {"tab\there", "byte 0x09 at offset 3"},
      {"cr\r", "byte 0x0d at offset 2"},
      {"del\x7f", "byte 0x7f at offset 3"},
      {"csi\xc2\x9b"
       "31m",
       "byte 0xc2 at offset 3"},  // C1 CSI, well-formed UTF-8
      {"bad\xff", "invalid at byte 3"},
      {"admin\xe2\x80\xae"
       "nimda",
       "format characters (U+202E at offset 5)"},                     // right-to-left override
      {"bob\xe2\x80\x8b", "format characters (U+200B at offset 3)"},  // zero-width space
      {"\xef\xbb\xbf"
       "bom",
       "format characters (U+FEFF at offset 0)"},
      {"over\xc0\xaf", "invalid at byte 4"},
  };
  for (const Case& c : cases) {
    absl::Status s = CheckUserId(c.id, "join: user id 2");
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message_part;
    EXPECT_NE(s.message().find("join: user id 2: "), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(c.message_part), std::string::npos) << s.message();
    if (!c.id.empty() && c.id.size() < 50) {
      EXPECT_EQ(s.message().find(c.id), std::string::npos) << "echoed the id";
    }
  }
}

TEST(EscapeForTerminalTest, MakesControlsAndInvalidBytesVisible) {
  EXPECT_EQ(EscapeForTerminal("plain J\xc3\xb6rg \xe6\x9d\x8e"), "plain J\xc3\xb6rg \xe6\x9d\x8e");
  EXPECT_EQ(EscapeForTerminal("a\x1b[2Jb"), "a\\x1b[2Jb");
  EXPECT_EQ(EscapeForTerminal("x\xc2\x9by"), "x\\xc2\\x9by");
  EXPECT_EQ(EscapeForTerminal("x\xffy\xe6\x9d"), "x\\xffy\\xe6\\x9d");
  EXPECT_EQ(EscapeForTerminal("1\n2\t3\r"), "1\\x0a2\\x093\\x0d");
  EXPECT_EQ(EscapeForTerminal("1\n2\t3\r", /*keep_line_breaks=*/true), "1\n2\t3\\x0d");
  EXPECT_EQ(EscapeForTerminal(std::string("nul\0end", 7)), "nul\\x00end");
  EXPECT_EQ(EscapeForTerminal("a\xe2\x80\xae"
                              "b\xe2\x81\xa6"
                              "c"),
            "a\\u202eb\\u2066c");
  EXPECT_EQ(EscapeForTerminal("\xe2\x80\x94 dash"), "\xe2\x80\x94 dash") << "U+2014 is printable";
}

TEST(EscapeForTerminalTest, TablesShowEscapedCellsAligned) {
  Table t({"user", "n"});
  t.AddRow({"a\x1b[31mred", "1"});
  t.AddRow({"bob", "22"});
  const std::string out = t.Render();
  EXPECT_EQ(out.find('\x1b'), std::string::npos);
  EXPECT_EQ(out,
            "user          n\n"
            "----------------\n"
            "a\\x1b[31mred   1\n"
            "bob           22\n");
}

}  // namespace
}  // namespace fedpers
