#include "client/residual_vault.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "common/atomic_file.h"
#include "coordinator/state_store.h"

namespace fedpers {
namespace {

std::string Fresh(const std::string& name) {
  std::string d = ::testing::TempDir() + "/vault_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

TEST(ResidualVaultTest, SealedResidualsRoundTripThroughTheCoordinatorStore) {
  const std::string dir = Fresh("roundtrip");
  auto vault = ResidualVault::Open(dir + "/residual.key");
  ASSERT_TRUE(vault.ok()) << vault.status();
  struct stat st;
  ASSERT_EQ(stat((dir + "/residual.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::vector<uint8_t> residual(5000);
  for (size_t i = 0; i < residual.size(); ++i) residual[i] = static_cast<uint8_t>(i * 13);
  auto store = StateStore::Open(dir + "/coordinator");
  auto sealed = vault->Seal("alice", 1, residual);
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(std::search(sealed->begin(), sealed->end(), residual.begin(), residual.begin() + 64), sealed->end())
      << "the stored blob does not contain the plaintext";
  ASSERT_EQ(*(*store)->PutResidual("alice", *sealed, /*sealed=*/true), 1);
  auto back = (*store)->GetResidual("alice");
  ASSERT_TRUE(back.ok());
  // A second vault on the same key file (the client restarted) opens it.
  auto reopened = ResidualVault::Open(dir + "/residual.key");
  absl::StatusOr<UnsealedResidual> opened = reopened->Unseal("alice", *back);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->version, 1);
  EXPECT_EQ(opened->plain, residual);
}

TEST(ResidualVaultTest, SwappedAlteredOrForeignBlobsAreRefused) {
  const std::string dir = Fresh("refuse");
  auto vault = ResidualVault::Open(dir + "/a.key");
  auto other = ResidualVault::Open(dir + "/b.key");
  std::vector<uint8_t> residual(100, 7);
  auto sealed = *vault->Seal("alice", 2, residual);
  EXPECT_EQ(vault->Unseal("bob", sealed).status().code(), absl::StatusCode::kPermissionDenied) << "another user";
  EXPECT_FALSE(other->Unseal("alice", sealed).ok()) << "another key";
  auto relabelled = sealed;
  relabelled[4] = 1;  // the header claims version 1
  EXPECT_FALSE(vault->Unseal("alice", relabelled).ok()) << "another version";
  auto altered = sealed;
  altered[40] ^= 1;
  EXPECT_FALSE(vault->Unseal("alice", altered).ok());
  auto no_magic = sealed;
  no_magic[0] = 'X';
  EXPECT_FALSE(vault->Unseal("alice", no_magic).ok());
  EXPECT_FALSE(vault->Unseal("alice", std::vector<uint8_t>(10)).ok());
  EXPECT_FALSE(vault->Seal("alice", -1, residual).ok());
  EXPECT_EQ(vault->Unseal("alice", sealed)->plain, residual);
  ASSERT_TRUE(WriteFileAtomically(dir + "/short.key", "abc").ok());
  EXPECT_EQ(ResidualVault::Open(dir + "/short.key").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace fedpers
