// Hostile traffic over the real gRPC stack (mutual TLS on loopback): an
// oversized message, a malformed masked vector, a message replayed from an
// earlier round and a client certificate from another CA are each refused
// with a clear status, and the round still commits.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "common/atomic_file.h"
#include "common/pki.h"
#include "coordinator/grpc_server.h"
#include "fedpers/v1/admin.grpc.pb.h"
#include "fedpers/v1/federation.grpc.pb.h"
#include "secure_agg/dp_mechanisms.h"
#include "secure_agg/secagg_client.h"

namespace fedpers {
namespace {

using namespace fedpers::v1;

std::string Read(const std::string& p) { return *ReadFileToString(p); }

class GrpcHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/grpc_hostile_" + std::to_string(::getpid());
    std::filesystem::remove_all(dir_);
    ASSERT_TRUE(InitCa(dir_ + "/ca").ok());
    ASSERT_TRUE(IssueCertificate(dir_ + "/ca", CertRole::kCoordinator, "coord", dir_ + "/certs").ok());
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(IssueCertificate(dir_ + "/ca", CertRole::kClient, "p" + std::to_string(i), dir_ + "/certs").ok());
    }
    ASSERT_TRUE(InitCa(dir_ + "/other").ok());
    ASSERT_TRUE(IssueCertificate(dir_ + "/other", CertRole::kClient, "p0", dir_ + "/othercerts").ok());
    store_ = std::move(*StateStore::Open(dir_ + "/state"));
    RuntimeSettings settings;
    settings.round.clients_per_round = 3;
    settings.round.min_clients = 3;
    settings.round.threshold = 3;
    settings.stage_timeout_ms = 60000;
    layout_ = *FlatLayout::Create({{"a.lora_B_global", {16, 4}}});
    runtime_ = std::move(*CoordinatorRuntime::Create(store_.get(), layout_, settings));
    ServeOptions o;
    o.cert_file = dir_ + "/certs/coord.crt";
    o.key_file = dir_ + "/certs/coord.key";
    o.ca_file = dir_ + "/certs/ca.crt";
    o.max_message_bytes = 1 << 20;
    server_ = std::move(*StartCoordinatorServer(o, runtime_.get()));
  }
  void TearDown() override { server_.reset(); }

  std::unique_ptr<Federation::Stub> Stub(const std::string& certs, const std::string& name) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = Read(dir_ + "/certs/ca.crt");
    ssl.pem_cert_chain = Read(certs + "/" + name + ".crt");
    ssl.pem_private_key = Read(certs + "/" + name + ".key");
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(8 << 20);
    return Federation::NewStub(grpc::CreateCustomChannel("localhost:" + std::to_string(server_->port()),
                                                         grpc::SslCredentials(ssl), args));
  }
  static std::unique_ptr<grpc::ClientContext> Ctx() {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return c;
  }

  std::string dir_;
  FlatLayout layout_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<CoordinatorRuntime> runtime_;
  std::unique_ptr<CoordinatorServer> server_;
};

// The coordinator refuses to serve under a client's certificate or one its
// own CA did not sign, naming the file, instead of failing every handshake.
TEST_F(GrpcHostileTest, ServerRefusesACertificateThatIsNotACoordinatorsOfItsCa) {
  ServeOptions o;
  o.cert_file = dir_ + "/certs/p0.crt";
  o.key_file = dir_ + "/certs/p0.key";
  o.ca_file = dir_ + "/certs/ca.crt";
  absl::Status s = StartCoordinatorServer(o, runtime_.get()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("p0.crt' is a client certificate"), absl::string_view::npos) << s;
  ASSERT_TRUE(IssueCertificate(dir_ + "/other", CertRole::kCoordinator, "coord", dir_ + "/othercerts").ok());
  o.cert_file = dir_ + "/othercerts/coord.crt";
  o.key_file = dir_ + "/othercerts/coord.key";
  s = StartCoordinatorServer(o, runtime_.get()).status();
  EXPECT_NE(s.message().find("does not verify against"), absl::string_view::npos) << s;
  // The coordinator's certificate with another key.
  o.cert_file = dir_ + "/certs/coord.crt";
  o.key_file = dir_ + "/certs/p1.key";
  s = StartCoordinatorServer(o, runtime_.get()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("p1.key' is not the key of"), absl::string_view::npos) << s;
  // A second coordinator on a port in use is an error, not a silent
  // SO_REUSEPORT share of the clients.
  o.key_file = dir_ + "/certs/coord.key";
  o.listen = "127.0.0.1:" + std::to_string(server_->port());
  s = StartCoordinatorServer(o, runtime_.get()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("the port is in use"), absl::string_view::npos) << s;
}

// The Admin service takes admin certificates only.
TEST_F(GrpcHostileTest, AdminRefusesAClientCertificate) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = Read(dir_ + "/certs/ca.crt");
  ssl.pem_cert_chain = Read(dir_ + "/certs/p0.crt");
  ssl.pem_private_key = Read(dir_ + "/certs/p0.key");
  const std::string target = "localhost:" + std::to_string(server_->port());
  auto admin = Admin::NewStub(grpc::CreateChannel(target, grpc::SslCredentials(ssl)));
  StatusRequest req;
  StatusResponse resp;
  auto ctx = Ctx();
  grpc::Status s = admin->Status(ctx.get(), req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_NE(s.error_message().find("'p0' is not an admin"), std::string::npos) << s.error_message();
}

TEST_F(GrpcHostileTest, BadTrafficIsRefusedAndTheRoundStillCommits) {
  std::vector<std::unique_ptr<Federation::Stub>> stubs;
  for (int i = 0; i < 3; ++i) {
    stubs.push_back(Stub(dir_ + "/certs", "p" + std::to_string(i)));
    JoinRequest j;
    j.add_user_ids("u" + std::to_string(i));
    j.set_layout_fingerprint(layout_.Fingerprint());
    JoinResponse r;
    auto ctx = Ctx();
    ASSERT_TRUE(stubs[i]->Join(ctx.get(), j, &r).ok());
  }
  // A client certificate from another CA does not get through the handshake.
  {
    auto foreign = Stub(dir_ + "/othercerts", "p0");
    JoinRequest j;
    j.add_user_ids("u9");
    JoinResponse r;
    auto ctx = Ctx();
    grpc::Status s = foreign->Join(ctx.get(), j, &r);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  }
  // Drive one round through gRPC, injecting bad traffic along the way.
  std::map<int, std::optional<secagg::SecAggClient>> sessions;
  std::map<int, int64_t> round_of;
  std::optional<SecAggUpload> replay;
  dp::RandomSource rng = dp::RandomSource::FromTestSeed(2);
  bool committed = false, injected = false;
  for (int iter = 0; iter < 400 && !committed; ++iter) {
    auto tick = runtime_->Tick();
    ASSERT_TRUE(tick.ok());
    if (tick->committed) committed = true;
    for (int i = 0; i < 3; ++i) {
      PollRequest pr;
      pr.set_user_id("u" + std::to_string(i));
      PollResponse resp;
      auto ctx = Ctx();
      ASSERT_TRUE(stubs[i]->Poll(ctx.get(), pr, &resp).ok());
      std::optional<SecAggClientMessage> reply;
      if (resp.has_invitation()) {
        std::vector<float> update(64, 0.01f * (i + 1));
        auto enc = dp::PrivatizeForSecAgg(update, *dp::RingFromProto(resp.invitation().ring()),
                                          *dp::DpFromProto(resp.invitation().dp()), rng);
        sessions[i].emplace(*secagg::SecAggClient::Create(resp.invitation().secagg(), resp.invitation().secagg_id(), *enc));
        round_of[i] = resp.invitation().round();
        reply = *sessions[i]->Start();
      } else if (resp.has_secagg()) {
        auto r = sessions[i]->Handle(resp.secagg());
        ASSERT_TRUE(r.ok()) << r.status();
        reply = *r;
      }
      if (!reply) continue;
      SecAggUpload up;
      up.set_user_id("u" + std::to_string(i));
      up.set_round(round_of[i]);
      *up.mutable_message() = *reply;
      if (i == 0 && reply->has_masked_input() && !injected) {
        injected = true;
        // Oversized: over the server's 1 MiB message limit.
        SecAggUpload big = up;
        big.mutable_message()->mutable_masked_input()->set_packed(std::string(2 << 20, 'x'));
        SecAggUploadResponse ack;
        auto c1 = Ctx();
        grpc::Status s1 = stubs[0]->Upload(c1.get(), big, &ack);
        EXPECT_EQ(s1.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s1.error_message();
        // Malformed vector: wrong length.
        SecAggUpload bad = up;
        bad.mutable_message()->mutable_masked_input()->set_packed("short");
        auto c2 = Ctx();
        grpc::Status s2 = stubs[0]->Upload(c2.get(), bad, &ack);
        EXPECT_EQ(s2.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s2.error_message();
        // Replay of this client's earlier ShareKeys message, and a message for another user.
        if (replay) {
          auto c3 = Ctx();
          grpc::Status s3 = stubs[0]->Upload(c3.get(), *replay, &ack);
          EXPECT_FALSE(s3.ok());
          EXPECT_NE(s3.error_message().find("arrived during"), std::string::npos) << s3.error_message();
        }
        SecAggUpload other = up;
        other.set_user_id("u1");
        auto c4 = Ctx();
        EXPECT_EQ(stubs[0]->Upload(c4.get(), other, &ack).error_code(), grpc::StatusCode::PERMISSION_DENIED);
      }
      if (i == 0 && reply->has_share_keys()) replay = up;
      SecAggUploadResponse ack;
      auto ctx2 = Ctx();
      grpc::Status s = stubs[i]->Upload(ctx2.get(), up, &ack);
      ASSERT_TRUE(s.ok()) << s.error_message();
    }
  }
  EXPECT_TRUE(injected);
  EXPECT_TRUE(committed) << "the round commits after the refused traffic";
  EXPECT_TRUE(store_->CheckIntegrity().ok());
}

}  // namespace
}  // namespace fedpers
