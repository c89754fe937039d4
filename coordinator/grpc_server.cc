#include "coordinator/grpc_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "common/pki.h"
#include "common/utf8.h"
#include "fedpers/v1/admin.grpc.pb.h"
#include "fedpers/v1/federation.grpc.pb.h"

namespace fedpers {
namespace {

using namespace fedpers::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case absl::StatusCode::kNotFound: code = grpc::StatusCode::NOT_FOUND; break;
    case absl::StatusCode::kAlreadyExists: code = grpc::StatusCode::ALREADY_EXISTS; break;
    case absl::StatusCode::kPermissionDenied: code = grpc::StatusCode::PERMISSION_DENIED; break;
    case absl::StatusCode::kUnauthenticated: code = grpc::StatusCode::UNAUTHENTICATED; break;
    case absl::StatusCode::kFailedPrecondition: code = grpc::StatusCode::FAILED_PRECONDITION; break;
    case absl::StatusCode::kResourceExhausted: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case absl::StatusCode::kDataLoss: code = grpc::StatusCode::DATA_LOSS; break;
    case absl::StatusCode::kUnavailable: code = grpc::StatusCode::UNAVAILABLE; break;
    default: code = grpc::StatusCode::INTERNAL;
  }
  return grpc::Status(code, std::string(s.message()));
}

// The caller's identity: the fedpers certificate of the TLS peer, or the
// x-fedpers-identity header in insecure mode.
absl::StatusOr<CertIdentity> Identify(grpc::ServerContext* ctx, bool insecure) {
  if (insecure) {
    auto it = ctx->client_metadata().find("x-fedpers-identity");
    if (it == ctx->client_metadata().end()) return absl::UnauthenticatedError("missing x-fedpers-identity header");
    std::string value(it->second.data(), it->second.size());
    const size_t colon = value.find(':');
    CertIdentity id;
    absl::StatusOr<CertRole> role = ParseCertRole(value.substr(0, colon));
    if (colon == std::string::npos || !role.ok() || colon + 1 >= value.size()) {
      return absl::UnauthenticatedError("x-fedpers-identity must be ROLE:NAME");
    }
    id.role = *role;
    id.name = value.substr(colon + 1);
    return id;
  }
  std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
  std::vector<grpc::string_ref> pem = auth ? auth->FindPropertyValues("x509_pem_cert") : std::vector<grpc::string_ref>{};
  if (pem.empty()) return absl::UnauthenticatedError("no client certificate");
  return ParseCertIdentity(std::string(pem[0].data(), pem[0].size()));
}

class FederationImpl final : public Federation::Service {
 public:
  FederationImpl(CoordinatorRuntime* rt, const ServeOptions& o) : rt_(rt), o_(o) {}

  grpc::Status Join(grpc::ServerContext* ctx, const JoinRequest* req, JoinResponse* resp) override {
    absl::StatusOr<CertIdentity> who = ClientCert(ctx);
    if (!who.ok()) return ToGrpc(who.status());
    absl::StatusOr<JoinResponse> r = rt_->Join(who->name, *req, who->fingerprint_sha256);
    if (!r.ok()) return ToGrpc(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }
  grpc::Status Leave(grpc::ServerContext* ctx, const LeaveRequest* req, LeaveResponse*) override {
    absl::StatusOr<std::string> who = Client(ctx);
    if (!who.ok()) return ToGrpc(who.status());
    return ToGrpc(rt_->Leave(*who, *req));
  }
  grpc::Status Poll(grpc::ServerContext* ctx, const PollRequest* req, PollResponse* resp) override {
    absl::StatusOr<std::string> who = Client(ctx);
    if (!who.ok()) return ToGrpc(who.status());
    absl::StatusOr<PollResponse> r = rt_->Poll(*who, req->user_id());
    if (!r.ok()) return ToGrpc(r.status());
    *resp = std::move(*r);
    return grpc::Status::OK;
  }
  grpc::Status Upload(grpc::ServerContext* ctx, const SecAggUpload* req, SecAggUploadResponse*) override {
    absl::StatusOr<std::string> who = Client(ctx);
    if (!who.ok()) return ToGrpc(who.status());
    return ToGrpc(rt_->Upload(*who, *req));
  }
  grpc::Status PutResidual(grpc::ServerContext* ctx, grpc::ServerReader<PutResidualChunk>* reader,
                           PutResidualResponse* resp) override {
    absl::StatusOr<std::string> who = Client(ctx);
    if (!who.ok()) return ToGrpc(who.status());
    PutResidualChunk chunk;
    std::string user;
    bool sealed = true;
    std::vector<uint8_t> blob;
    uint64_t total = 0;
    while (reader->Read(&chunk)) {
      if (blob.empty() && user.empty()) {
        user = chunk.user_id();
        sealed = chunk.sealed();
        total = chunk.chunk().total_bytes();
        if (total > static_cast<uint64_t>(o_.max_residual_bytes)) {
          return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              absl::StrCat("residual of ", total, " bytes exceeds the ", o_.max_residual_bytes, "-byte limit"));
        }
        blob.reserve(total);
      }
      if (chunk.user_id() != user || chunk.chunk().offset() != blob.size() || chunk.chunk().total_bytes() != total ||
          blob.size() + chunk.chunk().data().size() > total) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "residual chunks out of order or inconsistent");
      }
      blob.insert(blob.end(), chunk.chunk().data().begin(), chunk.chunk().data().end());
    }
    if (user.empty() || blob.size() != total) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "incomplete residual upload");
    }
    absl::StatusOr<int64_t> version = rt_->PutResidual(*who, user, blob, sealed);
    if (!version.ok()) return ToGrpc(version.status());
    resp->set_version(*version);
    return grpc::Status::OK;
  }
  grpc::Status GetResidual(grpc::ServerContext* ctx, const GetResidualRequest* req,
                           grpc::ServerWriter<Chunk>* writer) override {
    absl::StatusOr<std::string> who = Client(ctx);
    if (!who.ok()) return ToGrpc(who.status());
    absl::StatusOr<std::vector<uint8_t>> blob = rt_->GetResidual(*who, req->user_id(), req->version());
    if (!blob.ok()) return ToGrpc(blob.status());
    const size_t step = 1 << 20;
    for (size_t off = 0; off < blob->size() || off == 0; off += step) {
      Chunk c;
      c.set_offset(off);
      c.set_total_bytes(blob->size());
      c.set_data(std::string(blob->begin() + static_cast<std::ptrdiff_t>(off),
                             blob->begin() + static_cast<std::ptrdiff_t>(std::min(blob->size(), off + step))));
      if (!writer->Write(c)) break;
      if (blob->empty()) break;
    }
    return grpc::Status::OK;
  }
  grpc::Status DeleteResidual(grpc::ServerContext* ctx, const DeleteResidualRequest* req,
                              DeleteResidualResponse* resp) override {
    absl::StatusOr<std::string> who = Client(ctx);
    if (!who.ok()) return ToGrpc(who.status());
    absl::StatusOr<int> n = rt_->DeleteResidual(*who, req->user_id());
    if (!n.ok()) return ToGrpc(n.status());
    resp->set_deleted_versions(*n);
    return grpc::Status::OK;
  }

 private:
  absl::StatusOr<CertIdentity> ClientCert(grpc::ServerContext* ctx) {
    absl::StatusOr<CertIdentity> id = Identify(ctx, o_.insecure);
    if (!id.ok()) return id.status();
    if (id->role != CertRole::kClient) {
      return absl::PermissionDeniedError(absl::StrCat("'", id->name, "' is not a client certificate"));
    }
    return id;
  }
  absl::StatusOr<std::string> Client(grpc::ServerContext* ctx) {
    absl::StatusOr<CertIdentity> id = ClientCert(ctx);
    if (!id.ok()) return id.status();
    return id->name;
  }
  CoordinatorRuntime* rt_;
  ServeOptions o_;
};

class AdminImpl final : public Admin::Service {
 public:
  AdminImpl(CoordinatorRuntime* rt, const ServeOptions& o) : rt_(rt), o_(o) {}
  grpc::Status Status(grpc::ServerContext* ctx, const StatusRequest*, StatusResponse* resp) override {
    if (grpc::Status s = Check(ctx); !s.ok()) return s;
    *resp = rt_->AdminStatus();
    return grpc::Status::OK;
  }
  grpc::Status Rounds(grpc::ServerContext* ctx, const RoundsRequest* req, RoundsResponse* resp) override {
    if (grpc::Status s = Check(ctx); !s.ok()) return s;
    auto r = rt_->AdminRounds(req->limit(), req->before_round());
    if (!r.ok()) return ToGrpc(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }
  grpc::Status Clients(grpc::ServerContext* ctx, const ClientsRequest*, ClientsResponse* resp) override {
    if (grpc::Status s = Check(ctx); !s.ok()) return s;
    auto r = rt_->AdminClients();
    if (!r.ok()) return ToGrpc(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }
  grpc::Status Users(grpc::ServerContext* ctx, const UsersRequest* req, UsersResponse* resp) override {
    if (grpc::Status s = Check(ctx); !s.ok()) return s;
    auto r = rt_->AdminUsers(req->limit(), req->after_user_id());
    if (!r.ok()) return ToGrpc(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }

  grpc::Status SetPaused(grpc::ServerContext* ctx, const PauseRequest* req, StatusResponse* resp) override {
    if (grpc::Status s = Check(ctx); !s.ok()) return s;
    *resp = rt_->AdminSetPaused(req->paused());
    return grpc::Status::OK;
  }
  grpc::Status MoveUser(grpc::ServerContext* ctx, const MoveUserRequest* req, MoveUserResponse* resp) override {
    if (grpc::Status s = Check(ctx); !s.ok()) return s;
    auto r = rt_->AdminMoveUser(req->user_id(), req->to_client_id());
    if (!r.ok()) return ToGrpc(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }

 private:
  grpc::Status Check(grpc::ServerContext* ctx) {
    absl::StatusOr<CertIdentity> id = Identify(ctx, o_.insecure);
    if (!id.ok()) return ToGrpc(id.status());
    if (id->role != CertRole::kAdmin) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, absl::StrCat("'", id->name, "' is not an admin"));
    }
    return grpc::Status::OK;
  }
  CoordinatorRuntime* rt_;
  ServeOptions o_;
};

class ServerImpl final : public CoordinatorServer {
 public:
  ServerImpl(const ServeOptions& o, CoordinatorRuntime* rt) : federation_(rt, o), admin_(rt, o), rt_(rt), o_(o) {}
  ~ServerImpl() override { Shutdown(); }

  absl::Status Start() {
    std::shared_ptr<grpc::ServerCredentials> creds;
    if (o_.insecure) {
      std::fprintf(stderr,
                   "WARNING: serving WITHOUT TLS (\"insecure\": true in the serve config): anyone who can "
                   "reach the port can claim any "
                   "identity. Local experiments only.\n");
      creds = grpc::InsecureServerCredentials();
    } else {
      // gRPC would accept any files here and fail every handshake later, or
      // serve under a client's identity: check them now, by name.
      absl::StatusOr<TlsIdentity> tls = LoadTlsIdentity(o_.cert_file, o_.key_file, o_.ca_file, CertRole::kCoordinator);
      if (!tls.ok()) return tls.status();
      grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
      ssl.pem_root_certs = tls->ca_pem;
      ssl.pem_key_cert_pairs.push_back({tls->key_pem, tls->cert_pem});
      creds = grpc::SslServerCredentials(ssl);
    }
    grpc::ServerBuilder builder;
    // gRPC sets SO_REUSEPORT by default: a second coordinator on the same
    // port would start, and the kernel would split the clients between the
    // two. Binding exclusively makes that an error.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddListeningPort(o_.listen, creds, &port_);
    builder.SetMaxReceiveMessageSize(o_.max_message_bytes);
    builder.SetMaxSendMessageSize(o_.max_message_bytes);
    builder.RegisterService(&federation_);
    builder.RegisterService(&admin_);
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", o_.listen,
                                                 ": the port is in use (another coordinator?) or the host is not an "
                                                 "address of this machine"));
    }
    ticker_ = std::thread([this] {
      std::string last_error;
      while (!stop_.load()) {
        absl::StatusOr<CoordinatorRuntime::TickResult> t = rt_->Tick();
        if (t.ok() && t->committed) {
          std::fprintf(stderr, "round %ld committed: %ld survivors, epsilon %.4f\n", static_cast<long>(t->committed->round),
                       static_cast<long>(t->committed->survivors), t->committed->epsilon);
        }
        // Abort reasons quote clients (their ids, what they sent).
        if (t.ok() && t->aborted) {
          std::fprintf(stderr, "round aborted: %s\n", EscapeForTerminal(*t->aborted).c_str());
        }
        // Once per reason: a refusal by budget stands as long as the users do.
        if (t.ok() && t->refused && !t->refusal_repeated) {
          std::fprintf(
              stderr,
              "no round opens: %s (tried again when the eligible users change; `admin status` shows it)\n",
              EscapeForTerminal(*t->refused).c_str());
        }
        const std::string error = t.ok() ? "" : std::string(t.status().message());
        if (error != last_error && !error.empty()) {
          std::fprintf(stderr, "coordinator error (logged once): %s\n", EscapeForTerminal(error).c_str());
        }
        last_error = error;
        if (rt_->finished()) {
          std::lock_guard<std::mutex> lock(mu_);
          if (!done_) {
            std::fprintf(stderr,
                         "max_rounds committed: no more rounds open (polls and admin calls are served)\n");
          }
          done_ = true;
          cv_.notify_all();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(o_.tick_ms));
      }
    });
    return absl::OkStatus();
  }
  int port() const override { return port_; }
  void Wait() override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_ || stop_.load(); });
  }
  void Shutdown() override {
    if (stop_.exchange(true)) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
    if (ticker_.joinable()) ticker_.join();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

 private:
  FederationImpl federation_;
  AdminImpl admin_;
  CoordinatorRuntime* rt_;
  ServeOptions o_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::thread ticker_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> StartCoordinatorServer(const ServeOptions& options,
                                                                          CoordinatorRuntime* runtime) {
  auto server = std::make_unique<ServerImpl>(options, runtime);
  if (absl::Status s = server->Start(); !s.ok()) return s;
  return std::unique_ptr<CoordinatorServer>(std::move(server));
}

}  // namespace fedpers
