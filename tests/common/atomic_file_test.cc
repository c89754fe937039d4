#include "common/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

namespace fedpers {
namespace {

std::string FreshDir(const std::string& name) {
  std::string d = ::testing::TempDir() + "/atomic_file_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  return d;
}

TEST(AtomicFileTest, WritesReplaceWholeFilesAndCreateParents) {
  const std::string path = FreshDir("write") + "/a/b/file.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "second").ok());
  EXPECT_EQ(*ReadFileToString(path), "second");
  EXPECT_EQ(ReadFileToString(path + ".missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(ReadFileToString(path, 3).ok()) << "larger than max_bytes";
}

// One holder at a time, in this process or another; the lock goes with its
// holder (destroyed, moved from, or the process gone).
TEST(AtomicFileTest, AnExclusiveLockHasOneHolder) {
  const std::string path = FreshDir("lock") + "/state/client.lock";
  absl::StatusOr<ExclusiveFileLock> first = ExclusiveFileLock::Acquire(path, "the first holder");
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<ExclusiveFileLock> second = ExclusiveFileLock::Acquire(path, "the first holder");
  ASSERT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("the first holder"), absl::string_view::npos) << second.status();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(ExclusiveFileLock::Acquire(path, "").ok() ? 1 : 0);  // another process is refused too
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ExclusiveFileLock moved = std::move(*first);
  EXPECT_FALSE(ExclusiveFileLock::Acquire(path, "").ok()) << "the moved-to lock holds it";
  { ExclusiveFileLock released = std::move(moved); }
  EXPECT_TRUE(ExclusiveFileLock::Acquire(path, "").ok()) << "released with its holder";
}

}  // namespace
}  // namespace fedpers
