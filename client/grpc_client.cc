#include "client/grpc_client.h"

#include <grpcpp/grpcpp.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "common/host_port.h"
#include "common/pki.h"
#include "common/safetensors.h"
#include "common/utf8.h"
#include "fedpers/v1/federation.grpc.pb.h"
#include "secure_agg/crypto.h"

namespace fedpers {
namespace {

using namespace fedpers::v1;

constexpr size_t kChunkBytes = size_t{1} << 20;

absl::Status FromGrpc(const grpc::Status& s, absl::string_view what, bool insecure) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg =
      absl::StrCat(what, ": ", s.error_message(), TlsFailureHint(s.error_message(), insecure));
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED: return absl::UnavailableError(msg);
    case grpc::StatusCode::PERMISSION_DENIED: return absl::PermissionDeniedError(msg);
    case grpc::StatusCode::UNAUTHENTICATED: return absl::UnauthenticatedError(msg);
    case grpc::StatusCode::FAILED_PRECONDITION: return absl::FailedPreconditionError(msg);
    case grpc::StatusCode::INVALID_ARGUMENT: return absl::InvalidArgumentError(msg);
    case grpc::StatusCode::NOT_FOUND: return absl::NotFoundError(msg);
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return absl::ResourceExhaustedError(msg);
    case grpc::StatusCode::UNIMPLEMENTED:
      return absl::UnimplementedError(msg);
    default: return absl::InternalError(msg);
  }
}

// The stage whose work `response` hands over (see ClientRunOptions::kill_stage).
const char* StageOf(const PollResponse& response) {
  if (response.has_invitation()) {
    // A plain round's input leaves with the answer to the invitation.
    return response.invitation().aggregation() == fedpers::v1::AGGREGATION_PLAIN ? "inputs" : "keys";
  }
  if (!response.has_secagg()) return "";
  switch (response.secagg().message_case()) {
    case SecAggServerMessage::kKeysBroadcast: return "shares";
    case SecAggServerMessage::kSharesForward: return "inputs";
    case SecAggServerMessage::kUnmaskingRequest: return "unmasking";
    default: return "";
  }
}

std::string Sha256Hex(absl::string_view bytes) {
  secagg::Digest32 d = secagg::Sha256({std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())});
  return secagg::ToHex(d);
}

}  // namespace

struct CoordinatorConnection::Impl {
  ConnectionOptions options;
  std::unique_ptr<Federation::Stub> stub;

  std::unique_ptr<grpc::ClientContext> Context(int seconds) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    if (options.insecure) ctx->AddMetadata("x-fedpers-identity", "client:" + options.insecure_identity);
    return ctx;
  }
};

CoordinatorConnection::CoordinatorConnection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CoordinatorConnection::~CoordinatorConnection() = default;

absl::StatusOr<std::unique_ptr<CoordinatorConnection>> CoordinatorConnection::Open(const ConnectionOptions& o) {
  if (absl::Status s = CheckHostPort(o.coordinator, /*allow_port_zero=*/false); !s.ok()) return s;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (o.insecure) {
    std::fprintf(stderr, "WARNING: connecting WITHOUT TLS (--insecure): local experiments only.\n");
    creds = grpc::InsecureChannelCredentials();
  } else {
    absl::StatusOr<TlsIdentity> tls = LoadTlsIdentity(o.cert_file, o.key_file, o.ca_file, o.role);
    if (!tls.ok()) return tls.status();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = tls->ca_pem;
    ssl.pem_private_key = tls->key_pem;
    ssl.pem_cert_chain = tls->cert_pem;
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(o.max_message_bytes);
  args.SetMaxSendMessageSize(o.max_message_bytes);
  auto impl = std::make_unique<Impl>();
  impl->options = o;
  impl->stub = Federation::NewStub(grpc::CreateCustomChannel(o.coordinator, creds, args));
  return std::unique_ptr<CoordinatorConnection>(new CoordinatorConnection(std::move(impl)));
}

absl::StatusOr<JoinResponse> CoordinatorConnection::Join(const JoinRequest& request) {
  JoinResponse resp;
  auto ctx = impl_->Context(10);
  if (absl::Status s =
          FromGrpc(impl_->stub->Join(ctx.get(), request, &resp), "join", impl_->options.insecure);
      !s.ok())
    return s;
  return resp;
}

absl::Status CoordinatorConnection::Leave(const std::vector<std::string>& user_ids) {
  LeaveRequest req;
  for (const std::string& user : user_ids) req.add_user_ids(user);
  LeaveResponse resp;
  auto ctx = impl_->Context(5);
  return FromGrpc(impl_->stub->Leave(ctx.get(), req, &resp), "leave", impl_->options.insecure);
}

absl::StatusOr<PollResponse> CoordinatorConnection::Poll(const std::string& user_id) {
  PollRequest req;
  req.set_user_id(user_id);
  PollResponse resp;
  auto ctx = impl_->Context(10);
  if (absl::Status s = FromGrpc(impl_->stub->Poll(ctx.get(), req, &resp), "poll", impl_->options.insecure);
      !s.ok())
    return s;
  return resp;
}

absl::Status CoordinatorConnection::Upload(const SecAggUpload& upload) {
  SecAggUploadResponse ack;
  auto ctx = impl_->Context(30);
  return FromGrpc(impl_->stub->Upload(ctx.get(), upload, &ack), "upload", impl_->options.insecure);
}

absl::StatusOr<int64_t> CoordinatorConnection::PutResidual(const std::string& user_id, std::span<const uint8_t> blob,
                                                           bool sealed) {
  PutResidualResponse put;
  auto ctx = impl_->Context(60);
  auto writer = impl_->stub->PutResidual(ctx.get(), &put);
  for (size_t off = 0; off < blob.size() || off == 0; off += kChunkBytes) {
    PutResidualChunk chunk;
    chunk.set_user_id(user_id);
    chunk.set_sealed(sealed);
    const size_t n = std::min(kChunkBytes, blob.size() - off);
    chunk.mutable_chunk()->set_offset(off);
    chunk.mutable_chunk()->set_total_bytes(blob.size());
    chunk.mutable_chunk()->set_data(reinterpret_cast<const char*>(blob.data() + off), n);
    if (!writer->Write(chunk) || blob.empty()) break;
  }
  writer->WritesDone();
  if (absl::Status s = FromGrpc(writer->Finish(), "residual upload", impl_->options.insecure); !s.ok())
    return s;
  return put.version();
}

absl::StatusOr<std::vector<uint8_t>> CoordinatorConnection::GetResidual(const std::string& user_id, int64_t version) {
  GetResidualRequest req;
  req.set_user_id(user_id);
  req.set_version(version);
  auto ctx = impl_->Context(60);
  auto reader = impl_->stub->GetResidual(ctx.get(), req);
  std::vector<uint8_t> blob;
  Chunk chunk;
  std::optional<uint64_t> total;
  const uint64_t limit = static_cast<uint64_t>(impl_->options.max_message_bytes) * 64;
  while (reader->Read(&chunk)) {
    // The coordinator is a peer like any other: check what it sends.
    if (chunk.total_bytes() > limit || (total && chunk.total_bytes() != *total) || chunk.offset() != blob.size() ||
        blob.size() + chunk.data().size() > chunk.total_bytes()) {
      ctx->TryCancel();
      (void)reader->Finish();
      return absl::DataLossError(absl::StrCat("residual of user '", user_id, "': inconsistent chunks from the coordinator"));
    }
    total = chunk.total_bytes();
    blob.insert(blob.end(), chunk.data().begin(), chunk.data().end());
  }
  if (absl::Status s = FromGrpc(reader->Finish(), "residual download", impl_->options.insecure); !s.ok())
    return s;
  if (!total || blob.size() != *total) {
    return absl::DataLossError(absl::StrCat("residual of user '", user_id, "': incomplete download"));
  }
  return blob;
}

absl::StatusOr<int64_t> CoordinatorConnection::DeleteResidual(const std::string& user_id) {
  DeleteResidualRequest req;
  req.set_user_id(user_id);
  DeleteResidualResponse resp;
  auto ctx = impl_->Context(30);
  if (absl::Status s = FromGrpc(impl_->stub->DeleteResidual(ctx.get(), req, &resp), "residual delete",
                                impl_->options.insecure);
      !s.ok()) {
    return s;
  }
  return resp.deleted_versions();
}

std::string UpdateFileName(const std::string& user_id) {
  std::string out;
  for (unsigned char c : user_id) {
    if (std::isalnum(c) || c == '.' || c == '_' || c == '@' || c == '-') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  if (out.empty() || out[0] == '.') out = "%" + out;  // never ".", ".." or a hidden file
  return out + ".safetensors";
}

namespace {

// Fetches, opens and loads each user's latest residual. A user without one
// starts fresh. One that cannot be used (another key: most often the wrong
// --state-dir; another layout) is an error unless `replace_unusable`: a
// fresh residual would become the user's latest version, and the next
// restore would take it instead of the one the user trained.
absl::Status RestoreResiduals(CoordinatorConnection& coordinator, Gpt2LmHead model,
                              std::map<std::string, ClientSession*>& sessions, const ResidualVault& vault,
                              bool replace_unusable, ClientRunStats& stats) {
  for (auto& [user, session] : sessions) {
    if (session->residual().empty()) continue;
    absl::StatusOr<std::vector<uint8_t>> blob = coordinator.GetResidual(user);
    if (blob.status().code() == absl::StatusCode::kNotFound) continue;
    if (!blob.ok()) return blob.status();
    absl::StatusOr<UnsealedResidual> opened = vault.Unseal(user, *blob);
    absl::Status restored = opened.status();
    if (opened.ok()) {
      absl::StatusOr<SafetensorsFile> file =
          SafetensorsFile::Parse(std::string(opened->plain.begin(), opened->plain.end()));
      restored = file.status();
      if (file.ok()) {
        absl::StatusOr<std::vector<float>> values = model->BranchLayout(LoraBranch::kResidual).FromSafetensors(*file);
        restored = values.ok() ? session->RestoreResidual(std::move(*values)) : values.status();
      }
    }
    if (!restored.ok()) {
      if (!replace_unusable) {
        return absl::FailedPreconditionError(absl::StrCat(
            "user ", user, ": the residual the coordinator keeps cannot be used (", restored.message(),
            "). Run with the state directory whose residual.key sealed it, or pass --replace-unusable-residual "
            "to start a fresh residual (the stored versions stay at the coordinator until deleted)"));
      }
      std::fprintf(stderr, "user %s: the stored residual cannot be used (%s); starting a fresh one\n",
                   user.c_str(), EscapeForTerminal(restored.message()).c_str());
      continue;
    }
    ++stats.residuals_restored;
    const std::string plain(opened->plain.begin(), opened->plain.end());
    std::fprintf(stderr, "user %s: restored the residual of round %ld from the coordinator (sha256 %s)\n",
                 user.c_str(), static_cast<long>(opened->version), Sha256Hex(plain).c_str());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ClientRunStats> RunClient(const ClientRunOptions& o, Gpt2LmHead model,
                                         std::map<std::string, ClientSession*> sessions, const ResidualVault& vault,
                                         const std::atomic<bool>& stop) {
  if (sessions.empty()) return absl::InvalidArgumentError("a client needs at least one user");
  if (o.kill_round > 0 && o.kill_stage != "keys" && o.kill_stage != "shares" && o.kill_stage != "inputs" &&
      o.kill_stage != "unmasking") {
    return absl::InvalidArgumentError(absl::StrCat("unknown kill stage '", o.kill_stage,
                                                   "' (keys, shares, inputs or unmasking)"));
  }
  absl::StatusOr<std::unique_ptr<CoordinatorConnection>> connection = CoordinatorConnection::Open(o.connection);
  if (!connection.ok()) return connection.status();
  CoordinatorConnection& coordinator = **connection;
  ClientRunStats stats;
  std::map<std::string, int64_t> finished_per_user, round_of;
  int backoff_ms = 100;
  int64_t attempt = 0;  // since the coordinator was last reached
  std::string last_unreachable;
  std::chrono::steady_clock::time_point last_unreachable_report;
  bool joined = false, restored = !o.restore_residuals;
  auto all_done = [&] {
    if (o.rounds <= 0) return false;
    for (const auto& [user, s] : sessions) {
      if (finished_per_user[user] < o.rounds) return false;
    }
    return true;
  };
  while (!stop.load() && !all_done()) {
    absl::Status failure;
    if (!joined) {
      JoinRequest req;
      for (const auto& [user, s] : sessions) req.add_user_ids(user);
      req.set_layout_fingerprint(sessions.begin()->second->layout_fingerprint());
      req.set_client_version("fedpers 0.1.0");
      bool allows_plain = true;  // only if every hosted user's session does
      for (const auto& [user, s] : sessions) allows_plain = allows_plain && s->allows_plain_aggregation();
      req.set_allows_plain_aggregation(allows_plain);
      absl::StatusOr<JoinResponse> join = coordinator.Join(req);
      failure = join.status();
      if (failure.ok() && join->aggregation() == fedpers::v1::AGGREGATION_PLAIN && !allows_plain) {
        // Its users would never be sampled: waiting would be silent forever.
        return absl::FailedPreconditionError(
            "the coordinator runs rounds without secure aggregation (it sees each update), which this client "
            "takes part in only with --allow-plain-aggregation");
      }
      if (failure.ok()) {
        joined = true;
      } else if (failure.code() != absl::StatusCode::kUnavailable) {
        return failure;  // refused: retrying cannot help
      }
    }
    if (failure.ok() && joined && !restored) {
      failure = RestoreResiduals(coordinator, model, sessions, vault, o.replace_unusable_residuals, stats);
      if (failure.ok()) {
        restored = true;
      } else if (failure.code() != absl::StatusCode::kUnavailable) {
        return failure;
      }
    }
    bool worked = false;
    for (auto& [user, session] : sessions) {
      if (!failure.ok() || !joined) break;
      absl::StatusOr<PollResponse> polled = coordinator.Poll(user);
      if (!polled.ok()) {
        failure = polled.status();
        break;
      }
      const PollResponse& resp = *polled;
      const int64_t round = resp.has_invitation() ? resp.invitation().round() : round_of[user];
      if (o.kill_round > 0 && round == o.kill_round && o.kill_stage == StageOf(resp)) {
        std::fprintf(stderr, "fault injection: killing this client in round %ld, stage %s\n",
                     static_cast<long>(round), o.kill_stage.c_str());
        std::fflush(stderr);
        std::raise(SIGKILL);
      }
      absl::StatusOr<SecAggClientMessage> reply = absl::NotFoundError("");
      if (resp.has_invitation()) {
        round_of[user] = resp.invitation().round();
        std::vector<float> delta;
        reply = session->BeginRound(resp.invitation(), model, o.save_updates_dir.empty() ? nullptr : &delta);
        if (reply.ok() && !o.save_updates_dir.empty()) {
          absl::StatusOr<std::string> bytes = model->BranchLayout(LoraBranch::kGlobal).ToSafetensors(delta);
          if (!bytes.ok()) return bytes.status();
          const std::string path = absl::StrCat(o.save_updates_dir, "/round-", round_of[user], "/", UpdateFileName(user));
          if (absl::Status s = WriteFileAtomically(path, *bytes); !s.ok()) return s;
        }
      } else if (resp.has_secagg()) {
        reply = session->Handle(resp.secagg());
      } else if (resp.has_finished()) {
        worked = true;
        // Only the end of a round this process took part in: a restarted
        // client is told how the round its previous run was in ended, which
        // is neither a round it finished nor a residual it trained.
        auto began = round_of.find(user);
        if (began == round_of.end() || began->second != resp.finished().round()) {
          std::fprintf(stderr, "user %s: round %ld, which this process did not take part in, ended\n",
                       user.c_str(), static_cast<long>(resp.finished().round()));
          continue;
        }
        round_of.erase(began);
        session->EndRound();
        ++finished_per_user[user];
        ++stats.rounds_finished;
        if (resp.finished().committed()) ++stats.rounds_committed;
        if (o.upload_residuals && !session->residual().empty()) {
          absl::StatusOr<std::string> plain = model->BranchLayout(LoraBranch::kResidual).ToSafetensors(session->residual());
          if (!plain.ok()) return plain.status();
          std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(plain->data()), plain->size());
          absl::StatusOr<std::vector<uint8_t>> sealed = vault.Seal(user, resp.finished().round(), bytes);
          if (!sealed.ok()) return sealed.status();
          absl::StatusOr<int64_t> version = coordinator.PutResidual(user, *sealed, /*sealed=*/true);
          failure = version.status();
          if (version.ok()) {
            ++stats.residuals_uploaded;
            std::fprintf(stderr, "user %s: uploaded the residual of round %ld, sealed, as version %ld (sha256 %s)\n",
                         user.c_str(), static_cast<long>(resp.finished().round()), static_cast<long>(*version),
                         Sha256Hex(*plain).c_str());
          }
        }
        continue;
      } else {
        continue;
      }
      worked = true;
      if (!reply.ok()) {
        // The round is lost for this user (it aborted locally); the
        // coordinator counts it as a dropout.
        std::fprintf(stderr, "user %s: %s\n", user.c_str(),
                     EscapeForTerminal(reply.status().message()).c_str());
        continue;
      }
      SecAggUpload up;
      up.set_user_id(user);
      up.set_round(round_of[user]);
      *up.mutable_message() = *reply;
      absl::Status sent = coordinator.Upload(up);
      if (!sent.ok() && sent.code() == absl::StatusCode::kUnavailable) failure = sent;
    }
    if (!failure.ok()) {
      if (failure.code() == absl::StatusCode::kPermissionDenied) {
        // A user this client hosted now belongs to another client (an
        // admin moved it): retrying cannot help, and running on for the
        // other users would hide it.
        return absl::PermissionDeniedError(absl::StrCat("coordinator refused: ", failure.message(),
                                                        " (moved to another client by an admin?)"));
      }
      if (failure.code() != absl::StatusCode::kUnavailable) {
        // The coordinator's words: shown, never acted on by the terminal.
        std::fprintf(stderr, "coordinator refused: %s\n", EscapeForTerminal(failure.message()).c_str());
        if (failure.code() == absl::StatusCode::kFailedPrecondition) joined = false;  // e.g. coordinator restarted
      }
      ++stats.reconnects;
      ++attempt;
      // Unreachable: say why and when the next try is, once per distinct
      // reason and then at most once a minute (an operator watching a
      // client that cannot connect needs the reason, not a silent loop).
      const auto now = std::chrono::steady_clock::now();
      if (failure.code() == absl::StatusCode::kUnavailable &&
          (failure.message() != last_unreachable || now - last_unreachable_report > std::chrono::minutes(1))) {
        std::fprintf(stderr, "coordinator %s unreachable: %s (retrying in %d ms, attempt %ld)\n",
                     o.connection.coordinator.c_str(), EscapeForTerminal(failure.message()).c_str(),
                     backoff_ms, static_cast<long>(attempt));
        last_unreachable = std::string(failure.message());
        last_unreachable_report = now;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
      backoff_ms = std::min(o.max_backoff_ms, backoff_ms * 2);
      continue;
    }
    backoff_ms = 100;
    attempt = 0;
    if (!worked) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (joined) {
    // Otherwise the next round may sample these users and wait for them
    // until its stage deadline. A coordinator from before Leave does not
    // know it (Unimplemented): the liveness timeout does the same there.
    std::vector<std::string> users;
    for (const auto& [user, s] : sessions) users.push_back(user);
    if (absl::Status left = coordinator.Leave(users); !left.ok() && !absl::IsUnimplemented(left)) {
      std::fprintf(stderr, "could not tell the coordinator that this client leaves: %s\n",
                   EscapeForTerminal(left.message()).c_str());
    }
  }
  return stats;
}

}  // namespace fedpers
