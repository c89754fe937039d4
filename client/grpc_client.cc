#include "client/grpc_client.h"

#include <grpcpp/grpcpp.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "fedpers/v1/federation.grpc.pb.h"

namespace fedpers {
namespace {

using namespace fedpers::v1;

absl::Status FromGrpc(const grpc::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", s.error_message());
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED: return absl::UnavailableError(msg);
    case grpc::StatusCode::PERMISSION_DENIED: return absl::PermissionDeniedError(msg);
    case grpc::StatusCode::UNAUTHENTICATED: return absl::UnauthenticatedError(msg);
    case grpc::StatusCode::FAILED_PRECONDITION: return absl::FailedPreconditionError(msg);
    case grpc::StatusCode::INVALID_ARGUMENT: return absl::InvalidArgumentError(msg);
    default: return absl::InternalError(msg);
  }
}

// The stage whose work `response` hands over (see ClientRunOptions::kill_stage).
const char* StageOf(const PollResponse& response) {
  if (response.has_invitation()) return "keys";
  if (!response.has_secagg()) return "";
  switch (response.secagg().message_case()) {
    case SecAggServerMessage::kKeysBroadcast: return "shares";
    case SecAggServerMessage::kSharesForward: return "inputs";
    case SecAggServerMessage::kUnmaskingRequest: return "unmasking";
    default: return "";
  }
}

}  // namespace

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

absl::StatusOr<ClientRunStats> RunClient(const ClientRunOptions& o, std::map<std::string, ClientSession*> sessions,
                                         const ResidualVault& vault, const std::atomic<bool>& stop) {
  if (sessions.empty()) return absl::InvalidArgumentError("a client needs at least one user");
  if (o.kill_round > 0 && o.kill_stage != "keys" && o.kill_stage != "shares" && o.kill_stage != "inputs" &&
      o.kill_stage != "unmasking") {
    return absl::InvalidArgumentError(absl::StrCat("unknown kill stage '", o.kill_stage,
                                                   "' (keys, shares, inputs or unmasking)"));
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (o.insecure) {
    std::fprintf(stderr, "WARNING: connecting WITHOUT TLS (--insecure): local experiments only.\n");
    creds = grpc::InsecureChannelCredentials();
  } else {
    absl::StatusOr<std::string> cert = ReadFileToString(o.cert_file), key = ReadFileToString(o.key_file),
                                ca = ReadFileToString(o.ca_file);
    if (!cert.ok()) return cert.status();
    if (!key.ok()) return key.status();
    if (!ca.ok()) return ca.status();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *ca;
    ssl.pem_private_key = *key;
    ssl.pem_cert_chain = *cert;
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(o.max_message_bytes);
  args.SetMaxSendMessageSize(o.max_message_bytes);
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(o.coordinator, creds, args);
  std::unique_ptr<Federation::Stub> coordinator = Federation::NewStub(channel);
  auto context = [&](std::unique_ptr<grpc::ClientContext>& ctx, int seconds) {
    ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    if (o.insecure) ctx->AddMetadata("x-fedpers-identity", "client:" + o.insecure_identity);
  };
  ClientRunStats stats;
  std::map<std::string, int64_t> finished_per_user, round_of;
  int backoff_ms = 100;
  bool joined = false;
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
      JoinResponse resp;
      std::unique_ptr<grpc::ClientContext> ctx;
      context(ctx, 10);
      failure = FromGrpc(coordinator->Join(ctx.get(), req, &resp), "join");
      if (failure.ok()) {
        joined = true;
      } else if (failure.code() != absl::StatusCode::kUnavailable) {
        return failure;  // refused: retrying cannot help
      }
    }
    bool worked = false;
    for (auto& [user, session] : sessions) {
      if (!failure.ok() || !joined) break;
      PollRequest req;
      req.set_user_id(user);
      PollResponse resp;
      std::unique_ptr<grpc::ClientContext> ctx;
      context(ctx, 10);
      failure = FromGrpc(coordinator->Poll(ctx.get(), req, &resp), "poll");
      if (!failure.ok()) break;
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
        reply = session->BeginRound(resp.invitation());
        if (reply.ok() && !o.save_updates_dir.empty()) {
          const std::vector<float>& delta = session->last_delta();
          absl::StatusOr<std::string> bytes = session->global_layout().ToSafetensors(delta);
          if (!bytes.ok()) return bytes.status();
          const std::string path = absl::StrCat(o.save_updates_dir, "/round-", round_of[user], "/", UpdateFileName(user));
          if (absl::Status s = WriteFileAtomically(path, *bytes); !s.ok()) return s;
        }
      } else if (resp.has_secagg()) {
        reply = session->Handle(resp.secagg());
      } else if (resp.has_finished()) {
        worked = true;
        ++finished_per_user[user];
        ++stats.rounds_finished;
        if (resp.finished().committed()) ++stats.rounds_committed;
        if (o.upload_residuals && !session->residual().empty()) {
          const auto& r = session->residual();
          std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(r.data()), r.size() * sizeof(float));
          absl::StatusOr<std::vector<uint8_t>> sealed = vault.Seal(user, resp.finished().round(), bytes);
          if (!sealed.ok()) return sealed.status();
          PutResidualChunk chunk;
          chunk.set_user_id(user);
          chunk.set_sealed(true);
          chunk.mutable_chunk()->set_offset(0);
          chunk.mutable_chunk()->set_total_bytes(sealed->size());
          chunk.mutable_chunk()->set_data(std::string(sealed->begin(), sealed->end()));
          PutResidualResponse put;
          std::unique_ptr<grpc::ClientContext> pctx;
          context(pctx, 30);
          auto writer = coordinator->PutResidual(pctx.get(), &put);
          writer->Write(chunk);
          writer->WritesDone();
          failure = FromGrpc(writer->Finish(), "residual upload");
          if (failure.ok()) ++stats.residuals_uploaded;
        }
        continue;
      } else {
        continue;
      }
      worked = true;
      if (!reply.ok()) {
        // The round is lost for this user (it aborted locally); the
        // coordinator counts it as a dropout.
        std::fprintf(stderr, "user %s: %s\n", user.c_str(), std::string(reply.status().message()).c_str());
        continue;
      }
      SecAggUpload up;
      up.set_user_id(user);
      up.set_round(round_of[user]);
      *up.mutable_message() = *reply;
      SecAggUploadResponse ack;
      std::unique_ptr<grpc::ClientContext> uctx;
      context(uctx, 30);
      absl::Status sent = FromGrpc(coordinator->Upload(uctx.get(), up, &ack), "upload");
      if (!sent.ok() && sent.code() == absl::StatusCode::kUnavailable) failure = sent;
    }
    if (!failure.ok()) {
      if (failure.code() != absl::StatusCode::kUnavailable) {
        std::fprintf(stderr, "coordinator refused: %s\n", std::string(failure.message()).c_str());
        if (failure.code() == absl::StatusCode::kFailedPrecondition) joined = false;  // e.g. coordinator restarted
      }
      ++stats.reconnects;
      std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
      backoff_ms = std::min(o.max_backoff_ms, backoff_ms * 2);
      continue;
    }
    backoff_ms = 100;
    if (!worked) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return stats;
}

}  // namespace fedpers
