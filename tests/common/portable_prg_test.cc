#include "common/portable_prg.h"

#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

extern char** environ;

namespace fedpers {
namespace {

const char* kName = "transformer.h.0.attn.c_attn.lora_A_global";

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// Golden values: the generator is integer arithmetic plus correctly rounded
// IEEE operations, so these hold on every machine and compiler. A change
// here breaks agreement between clients of different versions.
TEST(PortablePrgTest, KnownAnswers) {
  PortablePrg p(42);
  EXPECT_EQ(p.Next(), 0x15780b2e0c2ec716ULL);
  EXPECT_EQ(p.Next(), 0x6104d9866d113a7eULL);
  EXPECT_EQ(p.Next(), 0xae17533239e499a1ULL);
  std::vector<float> a = DeriveLoraA(0x5eedf00dULL, kName, 8, 256);
  uint32_t bits;
  std::memcpy(&bits, &a[0], 4);
  EXPECT_EQ(bits, 0x3d0e79ffu);
  EXPECT_EQ(Fnv1a64(Bytes(a)), 0x3e3071a846800e9fULL);
}

TEST(PortablePrgTest, LoraAIsBoundedAndLabelDependent) {
  std::vector<float> a = DeriveLoraA(7, "x", 16, 400);
  const float bound = 1.0f / 20.0f;
  double mean = 0;
  for (float v : a) {
    ASSERT_LT(std::abs(v), bound);
    mean += v;
  }
  mean /= static_cast<double>(a.size());
  // Uniform(-b, b) has sd b / sqrt(3); the mean of 6400 draws is within 5 sd.
  EXPECT_LT(std::abs(mean), 5 * bound / std::sqrt(3.0) / std::sqrt(6400.0));
  EXPECT_NE(Bytes(a), Bytes(DeriveLoraA(7, "y", 16, 400)));
  EXPECT_NE(Bytes(a), Bytes(DeriveLoraA(8, "x", 16, 400)));
  EXPECT_EQ(Bytes(a), Bytes(DeriveLoraA(7, "x", 16, 400)));
}

TEST(PortablePrgTest, NextBelowIsUnbiased) {
  PortablePrg p(3);
  std::map<uint64_t, int> counts;
  const int n = 60000;
  for (int i = 0; i < n; ++i) counts[p.NextBelow(6)]++;
  double chi2 = 0;
  for (auto& [k, c] : counts) chi2 += (c - n / 6.0) * (c - n / 6.0) / (n / 6.0);
  EXPECT_EQ(counts.size(), 6u);
  EXPECT_LT(chi2, 20.5);  // 5 degrees of freedom, p = 0.001
}

// Helper run in a child process by the test below.
TEST(PortablePrgHelper, WriteLoraA) {
  const char* out = std::getenv("FEDPERS_PRG_OUT");
  if (out == nullptr) GTEST_SKIP() << "only run as a child of SameBitsInTwoProcesses";
  std::ofstream(out, std::ios::binary) << Bytes(DeriveLoraA(0x5eedf00dULL, kName, 8, 256));
}

TEST(PortablePrgTest, SameBitsInTwoProcesses) {
  std::vector<std::string> files;
  for (int i = 0; i < 2; ++i) {
    std::string path = ::testing::TempDir() + "/prg_child_" + std::to_string(i) + "_" + std::to_string(getpid());
    std::string env = "FEDPERS_PRG_OUT=" + path;
    std::string filter = "--gtest_filter=PortablePrgHelper.WriteLoraA";
    char* argv[] = {const_cast<char*>("/proc/self/exe"), filter.data(), nullptr};
    std::vector<char*> envp;
    for (char** e = environ; *e; ++e) envp.push_back(*e);
    envp.push_back(env.data());
    envp.push_back(nullptr);
    pid_t pid;
    ASSERT_EQ(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    files.push_back(path);
  }
  auto slurp = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  const std::string first = slurp(files[0]), second = slurp(files[1]);
  EXPECT_EQ(first.size(), 8u * 256 * 4);
  EXPECT_EQ(first, second);
  EXPECT_EQ(first, Bytes(DeriveLoraA(0x5eedf00dULL, kName, 8, 256)));
}

}  // namespace
}  // namespace fedpers
