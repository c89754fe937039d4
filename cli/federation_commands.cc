// `fedpers coordinator serve`, `fedpers client run`, `fedpers admin ...`.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "cli/commands.h"
#include "client/client_session.h"
#include "client/grpc_client.h"
#include "client/residual_vault.h"
#include "common/atomic_file.h"
#include "common/corpus.h"
#include "common/host_memory.h"
#include "common/host_port.h"
#include "common/model/checkpoint.h"
#include "common/table.h"
#include "common/tokenizer.h"
#include "common/utf8.h"
#include "coordinator/privacy_ledger.h"
#include "coordinator/round_machine.h"
#include "coordinator/serve_config.h"
#include "fedpers/v1/admin.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "secure_agg/crypto.h"

namespace fedpers::cli {
namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

// Whether the coordinator opens new rounds: "open", "paused", "max_rounds"
// (this process committed them), "refused" (open_refused says why) or
// "waiting_for_users" (fewer eligible than min_clients).
std::string NewRoundsState(const fedpers::v1::StatusResponse& r) {
  if (r.paused()) return "paused";
  if (r.max_rounds_reached()) return "max_rounds";
  if (r.stage() != "idle") return "open";
  if (!r.open_refused().empty()) return "refused";
  if (r.eligible_users() < r.min_clients()) return "waiting_for_users";
  return "open";
}

// NewRoundsState in words, with the reason.
std::string NewRoundsText(const fedpers::v1::StatusResponse& r) {
  const std::string state = NewRoundsState(r);
  if (state == "paused") return "paused (admin resume opens them again)";
  if (state == "max_rounds") return "none: this process committed the serve config's max_rounds";
  if (state == "refused") return absl::StrCat("refused: ", r.open_refused());
  if (state == "waiting_for_users") {
    return absl::StrFormat("waiting for users (%d eligible, min_clients %d)", r.eligible_users(),
                           r.min_clients());
  }
  return state;
}

// LocalTrainingOptions' checks name the options as an experiment config
// spells them; `client run` users set them with flags.
std::string InClientRunFlags(absl::string_view message) {
  return absl::StrReplaceAll(message, {{"global_steps", "--global-steps"},
                                       {"residual_steps", "--residual-steps"},
                                       {"micro_batch_size", "--micro-batch-size"},
                                       {"batch_size", "--batch-size"},
                                       {"seq_len", "--seq-len"},
                                       {"global_learning_rate", "--global-lr"},
                                       {"residual_learning_rate", "--residual-lr"},
                                       {"recompute activations", "--recompute-activations"}});
}

struct TlsFlags {
  std::string dir, name;
  bool insecure = false;
  std::string identity;
};

void AddTlsFlags(CLI::App* cmd, TlsFlags& t, const char* role) {
  cmd->add_option("--tls-dir", t.dir, "Directory with NAME.crt, NAME.key and ca.crt (from `fedpers pki issue`)");
  cmd->add_option("--name", t.name, absl::StrFormat("The %s certificate's name", role));
  cmd->add_flag("--insecure", t.insecure, "No TLS: local experiments only (give the claimed name with --identity)");
  cmd->add_option("--identity", t.identity, "Name claimed with --insecure");
}

// "2026-11-24 13:58:23" for a Unix time, "-" for 0 (never).
std::string FormatUtc(int64_t unix_seconds) {
  if (unix_seconds <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  if (gmtime_r(&t, &tm) == nullptr) return absl::StrCat(unix_seconds);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

// Connection options from --coordinator and the TLS flags of a client command.
ConnectionOptions ClientConnection(const std::string& coordinator, const TlsFlags& tls) {
  if (!tls.insecure && (tls.dir.empty() || tls.name.empty())) Fail("give --tls-dir and --name (or --insecure)");
  if (tls.insecure && tls.identity.empty()) {
    Fail("--insecure needs --identity NAME: without TLS the coordinator takes the name this side claims");
  }
  ConnectionOptions o;
  o.coordinator = coordinator;
  o.insecure = tls.insecure;
  o.insecure_identity = tls.identity;
  o.cert_file = tls.dir + "/" + tls.name + ".crt";
  o.key_file = tls.dir + "/" + tls.name + ".key";
  o.ca_file = tls.dir + "/ca.crt";
  return o;
}

}  // namespace

void RegisterFederation(CLI::App& app, const GlobalOptions& global) {
  // coordinator serve
  auto* coordinator = app.add_subcommand("coordinator", "Run the coordinator");
  coordinator->require_subcommand(1);
  auto* serve = coordinator->add_subcommand("serve", "Serve federated rounds over gRPC with mutual TLS");
  auto config_path = std::make_shared<std::string>();
  serve->add_option("--config", *config_path, "Serve config (JSON; see docs/coordinator.md)")->required();
  serve->callback([config_path] {
    absl::StatusOr<std::string> text = ReadFileToString(*config_path);
    if (!text.ok()) Fail(std::string(text.status().message()));
    absl::StatusOr<ServeConfig> config =
        ParseServeConfig(*text, std::filesystem::path(*config_path).parent_path().string());
    if (!config.ok()) Fail(absl::StrCat(*config_path, ": ", config.status().message()));
    if (const std::string w =
            DiscreteNoiseWarning(config->runtime.round, static_cast<size_t>(config->layout.total_size()));
        !w.empty()) {
      std::fprintf(stderr, "WARNING: %s\n", w.c_str());
    }
    absl::StatusOr<std::unique_ptr<StateStore>> store = StateStore::Open(config->state_dir);
    if (!store.ok()) Fail(std::string(store.status().message()));
    if (absl::Status s = (*store)->CheckIntegrity(); !s.ok()) Fail(std::string(s.message()));
    absl::StatusOr<std::unique_ptr<CoordinatorRuntime>> rt =
        CoordinatorRuntime::Create(store->get(), config->layout, config->runtime);
    if (!rt.ok()) Fail(std::string(rt.status().message()));
    absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = StartCoordinatorServer(config->serve, rt->get());
    if (!server.ok()) Fail(std::string(server.status().message()));
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    const auto status = (*rt)->AdminStatus();
    const std::string against_coordinator =
        std::isfinite(status.epsilon_budget_against_coordinator())
            ? absl::StrFormat("; against the coordinator %s of %g",
                              status.has_epsilon_against_coordinator()
                                  ? absl::StrFormat("%.4f", status.epsilon_against_coordinator())
                                  : "unknown",
                              status.epsilon_budget_against_coordinator())
            : "";
    std::fprintf(
        stderr,
        "coordinator listening on port %d of %s (state in %s, last committed round %ld, epsilon %.4f of the "
        "budget %g at delta %g%s)\n",
        (*server)->port(), config->serve.listen.substr(0, config->serve.listen.rfind(':')).c_str(),
        config->state_dir.c_str(), static_cast<long>(status.last_committed_round()), status.epsilon(),
        status.epsilon_budget(), status.delta(), against_coordinator.c_str());
    // Serves until SIGINT/SIGTERM; after max_rounds it keeps answering polls
    // and admin calls but opens no more rounds.
    while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (*server)->Shutdown();
    std::cout << "last committed round: " << (*rt)->AdminStatus().last_committed_round() << "\n";
  });

  // client run
  auto* client = app.add_subcommand("client", "Run a client");
  client->require_subcommand(1);
  auto* run = client->add_subcommand("run", "Join a coordinator and take part in rounds for one or more users");
  struct RunFlags {
    std::string coordinator, data, base, state_dir = "client-state";
    std::vector<std::string> users;
    TlsFlags tls;
    LocalTrainingOptions local;
    std::string schedule = TrainingScheduleName(LocalTrainingOptions().schedule);
    int64_t rounds = 0;
    std::string save_updates, kill_at;
    bool allow_plain = false, replace_unusable = false;
  };
  auto f = std::make_shared<RunFlags>();
  run->add_option("--coordinator", f->coordinator, "HOST:PORT")->required();
  run->add_option("--data", f->data, absl::StrCat("Corpus spec with the users' text: ", kCorpusSpecForms))->required();
  run->add_option("--user", f->users, "A user this client hosts (repeatable)")->required();
  run->add_option("--base", f->base, "Base model directory (same as the coordinator's)")->required();
  run->add_option("--state-dir", f->state_dir, "Where the residual key lives")->capture_default_str();
  run->add_option("--rounds", f->rounds, "Stop after this many rounds per user (0: until stopped)")
      ->capture_default_str()
      ->check(NonNegative());
  // The local training flags mirror an experiment config's "local" section,
  // so a deployment can train as a simulation found best.
  run->add_option("--global-steps", f->local.global_steps, "Local steps on B_g per round")
      ->capture_default_str()
      ->check(NonNegative());
  run->add_option("--residual-steps", f->local.residual_steps, "Local steps on the residual per round")
      ->capture_default_str()
      ->check(NonNegative());
  run->add_option("--schedule", f->schedule, "joint | alternating | residual-after-global")
      ->capture_default_str();
  run->add_option("--batch-size", f->local.batch_size, "Windows per step")
      ->capture_default_str()
      ->check(Positive());
  run->add_option("--seq-len", f->local.seq_len, "Window length in tokens (0: the model's n_positions)")
      ->capture_default_str()
      ->check(NonNegative());
  run->add_option("--global-lr", f->local.global_learning_rate, "Adam learning rate of B_g")
      ->capture_default_str()
      ->check(Positive());
  run->add_option("--residual-lr", f->local.residual_learning_rate, "Adam learning rate of the residual")
      ->capture_default_str()
      ->check(Positive());
  AddTrainingMemoryFlags(run, &f->local.micro_batch_size, &f->local.recompute_activations);
  run->add_flag("--allow-plain-aggregation", f->allow_plain,
                "Take part in rounds without secure aggregation, where the coordinator sees this client's update");
  run->add_flag("--replace-unusable-residual", f->replace_unusable,
                "If the coordinator keeps a residual this client cannot open (another residual.key) or load (another "
                "layout), start a fresh one instead of stopping; the stored versions stay until deleted");
  run->add_option("--save-updates", f->save_updates,
                  "Also write each plain update (before clipping and noise) to DIR/round-R/USER.safetensors, for audits");
  run->add_option("--fault-kill-at", f->kill_at,
                  "Testing only: ROUND:STAGE (keys|shares|inputs|unmasking); the process SIGKILLs itself there")
      ->group("Fault injection");
  AddTlsFlags(run, f->tls, "client");
  run->callback([f] {
    for (size_t i = 0; i < f->users.size(); ++i) {
      if (absl::Status s = CheckUserId(f->users[i], "--user"); !s.ok()) Fail(std::string(s.message()));
      if (std::find(f->users.begin(), f->users.begin() + static_cast<std::ptrdiff_t>(i), f->users[i]) !=
          f->users.begin() + static_cast<std::ptrdiff_t>(i)) {
        Fail(absl::StrCat("--user '", f->users[i], "' is given twice"));
      }
    }
    LocalTrainingOptions opts = f->local;
    absl::StatusOr<TrainingSchedule> schedule = ParseTrainingSchedule(f->schedule);
    if (!schedule.ok()) Fail(absl::StrCat("--schedule: ", schedule.status().message()));
    opts.schedule = *schedule;
    opts.allow_plain_aggregation = f->allow_plain;
    if (absl::Status s = opts.Validate(); !s.ok()) Fail(InClientRunFlags(s.message()));
    absl::StatusOr<Corpus> corpus = LoadCorpus(f->data);
    if (!corpus.ok()) Fail(std::string(corpus.status().message()));
    absl::StatusOr<Gpt2LmHead> model = LoadBaseModel(f->base, LoraConfig());
    if (!model.ok()) Fail(std::string(model.status().message()));
    // What only the model can tell, before connecting (a round would fail).
    if (absl::Status s = opts.ValidateForModel((*model)->config(), AvailableMemoryBytes()); !s.ok()) {
      Fail(absl::StrCat("base model ", f->base, ": ", InClientRunFlags(s.message())));
    }
    std::map<std::string, ClientSession> owned;
    std::map<std::string, ClientSession*> sessions;
    for (const std::string& user : f->users) {
      const UserText* u = corpus->Find(user);
      if (u == nullptr) Fail(absl::StrCat("user '", user, "' is not in ", corpus->spec));
      TextSplit split = SplitTrainTest(u->text, 0.8);
      absl::StatusOr<ClientSession> s =
          ClientSession::Create(*model, user, [train = split.train] { return ByteTokenizer::Encode(train); }, opts);
      if (!s.ok()) Fail(std::string(s.status().message()));
      sessions[user] = &owned.emplace(user, std::move(*s)).first->second;
    }
    // Two processes for the same users would split the coordinator's
    // messages between them (rounds abort) and fork the residual history.
    absl::StatusOr<ExclusiveFileLock> lock = ExclusiveFileLock::Acquire(
        f->state_dir + "/client.lock",
        absl::StrCat("another `fedpers client run` uses --state-dir ", f->state_dir, "; stop it first"));
    if (!lock.ok()) Fail(std::string(lock.status().message()));
    absl::StatusOr<ResidualVault> vault = ResidualVault::Open(f->state_dir + "/residual.key");
    if (!vault.ok()) Fail(std::string(vault.status().message()));
    ClientRunOptions o;
    o.connection = ClientConnection(f->coordinator, f->tls);
    o.rounds = f->rounds;
    o.save_updates_dir = f->save_updates;
    o.replace_unusable_residuals = f->replace_unusable;
    if (!f->kill_at.empty()) {
      const size_t colon = f->kill_at.find(':');
      if (colon == std::string::npos || !absl::SimpleAtoi(f->kill_at.substr(0, colon), &o.kill_round) ||
          o.kill_round <= 0) {
        Fail(absl::StrCat("--fault-kill-at '", f->kill_at, "': expected ROUND:STAGE, e.g. 2:shares"));
      }
      o.kill_stage = f->kill_at.substr(colon + 1);
    }
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    absl::StatusOr<ClientRunStats> stats = RunClient(o, *model, sessions, *vault, g_stop);
    if (!stats.ok()) Fail(std::string(stats.status().message()));
    std::cout << absl::StrFormat("rounds finished %d (committed %d), residuals uploaded %d, restored %d, reconnects %d\n",
                                 stats->rounds_finished, stats->rounds_committed, stats->residuals_uploaded,
                                 stats->residuals_restored, stats->reconnects);
  });

  // client residual get | delete
  auto* residual = client->add_subcommand("residual", "A user's residual adapter as the coordinator keeps it (sealed)");
  residual->require_subcommand(1);
  struct ResidualFlags {
    std::string coordinator, user, state_dir = "client-state", out;
    int64_t version = 0;
    TlsFlags tls;
    bool json = false;
  };
  auto rf = std::make_shared<ResidualFlags>();
  auto* get = residual->add_subcommand(
      "get", "Download a user's sealed residual, open it with this client's key and write it as safetensors");
  auto* del = residual->add_subcommand("delete", "Delete every stored version of a user's residual");
  for (CLI::App* cmd : {get, del}) {
    cmd->add_option("--coordinator", rf->coordinator, "HOST:PORT")->required();
    cmd->add_option("--user", rf->user, "The user (owned by this client)")->required();
    cmd->add_flag("--json", rf->json, "Print JSON");
    AddTlsFlags(cmd, rf->tls, "client");
  }
  get->add_option("--state-dir", rf->state_dir, "Where the residual key lives")->capture_default_str();
  get->add_option("--version", rf->version, "Version to fetch (0: the latest)")
      ->capture_default_str()
      ->check(NonNegative());
  get->add_option("--out", rf->out, "Output file (safetensors, fedpers' residual layout)")->required();
  get->callback([rf] {
    absl::StatusOr<std::unique_ptr<CoordinatorConnection>> c =
        CoordinatorConnection::Open(ClientConnection(rf->coordinator, rf->tls));
    if (!c.ok()) Fail(std::string(c.status().message()));
    absl::StatusOr<std::vector<uint8_t>> blob = (*c)->GetResidual(rf->user, rf->version);
    if (!blob.ok()) Fail(std::string(blob.status().message()));
    if (!std::filesystem::exists(rf->state_dir + "/residual.key")) {
      Fail(absl::StrCat("no residual key in ", rf->state_dir, " (--state-dir of the client that sealed it)"));
    }
    absl::StatusOr<ResidualVault> vault = ResidualVault::Open(rf->state_dir + "/residual.key");
    if (!vault.ok()) Fail(std::string(vault.status().message()));
    absl::StatusOr<UnsealedResidual> opened = vault->Unseal(rf->user, *blob);
    if (!opened.ok()) Fail(std::string(opened.status().message()));
    const std::string plain(opened->plain.begin(), opened->plain.end());
    if (absl::Status s = WriteFileAtomically(rf->out, plain); !s.ok()) Fail(std::string(s.message()));
    const std::string sha = secagg::ToHex(secagg::Sha256({std::span<const uint8_t>(opened->plain)}));
    if (rf->json) {
      std::cout << nlohmann::json({{"user_id", rf->user}, {"round", opened->version}, {"bytes", plain.size()},
                                   {"sha256", sha}, {"out", rf->out}}).dump(2) << "\n";
    } else {
      std::cout << absl::StrFormat("user %s: residual of round %d (%d bytes, sha256 %s) written to %s\n", rf->user,
                                   opened->version, plain.size(), sha, rf->out);
    }
  });
  del->callback([rf] {
    absl::StatusOr<std::unique_ptr<CoordinatorConnection>> c =
        CoordinatorConnection::Open(ClientConnection(rf->coordinator, rf->tls));
    if (!c.ok()) Fail(std::string(c.status().message()));
    absl::StatusOr<int64_t> n = (*c)->DeleteResidual(rf->user);
    if (!n.ok()) Fail(std::string(n.status().message()));
    if (rf->json) {
      std::cout << nlohmann::json({{"user_id", rf->user}, {"deleted_versions", *n}}).dump(2) << "\n";
    } else {
      std::cout << absl::StrFormat("user %s: %d residual versions deleted\n", rf->user, *n);
    }
  });

  // admin
  auto* admin = app.add_subcommand("admin", "Operate a coordinator (admin certificate)");
  admin->require_subcommand(1);
  struct AdminFlags {
    std::string coordinator;
    TlsFlags tls;
    bool json = false;
    int limit = 20;
    CLI::Option* limit_given = nullptr;  // rounds only
    int users_limit = 0;
    std::string user, to_client;
  };
  auto a = std::make_shared<AdminFlags>();
  auto connect = [a]() {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (absl::Status s = CheckHostPort(a->coordinator, /*allow_port_zero=*/false); !s.ok()) {
      Fail(absl::StrCat("--coordinator: ", s.message()));
    }
    const ConnectionOptions o = ClientConnection(a->coordinator, a->tls);
    if (o.insecure) {
      creds = grpc::InsecureChannelCredentials();
    } else {
      absl::StatusOr<TlsIdentity> tls = LoadTlsIdentity(o.cert_file, o.key_file, o.ca_file, CertRole::kAdmin);
      if (!tls.ok()) Fail(std::string(tls.status().message()));
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = tls->ca_pem;
      ssl.pem_private_key = tls->key_pem;
      ssl.pem_cert_chain = tls->cert_pem;
      creds = grpc::SslCredentials(ssl);
    }
    // Listings come in pages of about 1 MiB, but a page holds at least one
    // row, and a round's row grows with its sample: accept what the
    // coordinator may send (ServeOptions::max_message_bytes, 64 MiB).
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(o.max_message_bytes);
    return fedpers::v1::Admin::NewStub(grpc::CreateCustomChannel(a->coordinator, creds, args));
  };
  auto ctx = [a]() {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (a->tls.insecure) c->AddMetadata("x-fedpers-identity", "admin:" + a->tls.identity);
    return c;
  };
  auto check = [a](const grpc::Status& s) {
    if (!s.ok())
      Fail(absl::StrCat("coordinator: ", s.error_message(),
                        TlsFailureHint(s.error_message(), a->tls.insecure)));
  };
  auto print_status = [a](const fedpers::v1::StatusResponse& r) {
    if (a->json) {
      std::cout << nlohmann::json(
                       {{"last_committed_round", r.last_committed_round()},
                        {"stage", r.stage()},
                        {"current_round", r.current_round()},
                        {"connected_clients", r.connected_clients()},
                        {"joined_users", r.joined_users()},
                        {"eligible_users", r.eligible_users()},
                        {"paused", r.paused()},
                        {"new_rounds", NewRoundsState(r)},
                        {"open_refused", r.open_refused().empty() ? nlohmann::json(nullptr)
                                                                  : nlohmann::json(r.open_refused())},
                        {"max_rounds_reached", r.max_rounds_reached()},
                        {"min_clients", r.min_clients()},
                        {"epsilon", EpsilonToJson(r.epsilon())},
                        {"delta", r.delta()},
                        // Budgets as epsilons: "inf" for none (JSON has no infinity).
                        {"epsilon_budget", EpsilonToJson(r.epsilon_budget())},
                        {"epsilon_against_coordinator",
                         EpsilonToJson(r.has_epsilon_against_coordinator()
                                           ? std::optional<double>(r.epsilon_against_coordinator())
                                           : std::nullopt)},
                        {"epsilon_budget_against_coordinator",
                         EpsilonToJson(r.has_epsilon_budget_against_coordinator()
                                           ? std::optional<double>(r.epsilon_budget_against_coordinator())
                                           : std::nullopt)}})
                       .dump(2)
                << "\n";
      return;
    }
    Table t({"field", "value"});
    t.AddRow({"last committed round", absl::StrFormat("%d", r.last_committed_round())});
    t.AddRow({"stage", r.stage()});
    t.AddRow({"current round", absl::StrFormat("%d", r.current_round())});
    t.AddRow({"clients joined", absl::StrFormat("%d", r.connected_clients())});
    t.AddRow({"users joined", absl::StrFormat("%d", r.joined_users())});
    t.AddRow({"users eligible now", absl::StrFormat("%d", r.eligible_users())});
    t.AddRow({"new rounds", EscapeForTerminal(NewRoundsText(r))});
    t.AddRow({"epsilon", absl::StrFormat("%.4f (delta %g, budget %g)", r.epsilon(), r.delta(), r.epsilon_budget())});
    const std::string coordinator_budget =
        r.has_epsilon_budget_against_coordinator() && std::isfinite(r.epsilon_budget_against_coordinator())
            ? absl::StrFormat(", budget %g", r.epsilon_budget_against_coordinator())
            : "";
    t.AddRow({"epsilon against the coordinator",
              r.has_epsilon_against_coordinator()
                  ? absl::StrFormat("%.4f (it knows who was sampled: no amplification%s)",
                                    r.epsilon_against_coordinator(), coordinator_budget)
                  : absl::StrCat("unknown (ledger restored from a snapshot without contributions",
                                 coordinator_budget, ")")});
    std::cout << t.Render();
  };
  const std::vector<std::pair<std::string, std::string>> admin_commands = {
      {"status", "Show the last committed round, the stage, users and epsilon"},
      {"rounds", "Show the rounds: state, times, metrics or abort reason"},
      {"clients", "Show the clients (certificate names) and when they were seen"},
      {"users", "Show the users: residual versions, sealing, bytes, epsilon"},
      {"pause", "Open no new rounds (a running round finishes)"},
      {"resume", "Open rounds again"},
      {"move-user", "Move a user to another client (e.g. a renamed partner certificate), with its stored residuals"}};
  for (const auto& [what, description] : admin_commands) {
    auto* cmd = admin->add_subcommand(what, description);
    cmd->add_option("--coordinator", a->coordinator, "HOST:PORT")->required();
    cmd->add_flag("--json", a->json, "Print JSON");
    if (what == "rounds") {
      a->limit_given =
          cmd->add_option("--limit", a->limit,
                          "Newest rounds to show (0: all; --json lists all unless --limit is given)")
              ->capture_default_str()
              ->check(NonNegative());
    }
    if (what == "users") {
      cmd->add_option("--limit", a->users_limit, "Users to show, in id order (0: all)")
          ->capture_default_str()
          ->check(NonNegative());
    }
    if (what == "move-user") {
      cmd->add_option("--user", a->user, "The user to move")->required();
      cmd->add_option("--to", a->to_client, "The client (certificate name) that hosts it from now on")->required();
    }
    AddTlsFlags(cmd, a->tls, "admin");
    cmd->callback([a, connect, ctx, check, print_status, name = what] {
      auto s = connect();
      auto c = ctx();
      if (name == "status") {
        fedpers::v1::StatusResponse r;
        check(s->Status(c.get(), {}, &r));
        print_status(r);
      } else if (name == "pause" || name == "resume") {
        fedpers::v1::PauseRequest req;
        req.set_paused(name == "pause");
        fedpers::v1::StatusResponse r;
        check(s->SetPaused(c.get(), req, &r));
        print_status(r);
      } else if (name == "move-user") {
        fedpers::v1::MoveUserRequest req;
        req.set_user_id(a->user);
        req.set_to_client_id(a->to_client);
        fedpers::v1::MoveUserResponse r;
        check(s->MoveUser(c.get(), req, &r));
        if (a->json) {
          std::cout << nlohmann::json({{"user_id", a->user}, {"previous_client_id", r.previous_client_id()},
                                       {"client_id", a->to_client}})
                           .dump(2)
                    << "\n";
        } else {
          std::cout << absl::StrFormat(
              "user %s moved from client %s to %s (it takes part once %s joins with it)\n",
              EscapeForTerminal(a->user), EscapeForTerminal(r.previous_client_id()),
              EscapeForTerminal(a->to_client), EscapeForTerminal(a->to_client));
        }
      } else if (name == "rounds") {
        // As `data users`: the table is for reading, --json for scripts.
        const int want = a->json && !*a->limit_given ? 0 : a->limit;
        fedpers::v1::RoundsResponse r;  // the pages, joined
        fedpers::v1::RoundsRequest req;
        while (true) {
          req.set_limit(want == 0 ? 0 : want - r.rounds_size());
          fedpers::v1::RoundsResponse page;
          check(s->Rounds(ctx().get(), req, &page));
          if (req.before_round() == 0) r.set_total_rounds(page.total_rounds());  // as of the first page
          for (auto& x : *page.mutable_rounds()) *r.add_rounds() = std::move(x);
          if (page.next_before_round() == 0 || (want > 0 && r.rounds_size() >= want)) break;
          if (req.before_round() != 0 && page.next_before_round() >= req.before_round()) {
            Fail(absl::StrCat("coordinator: the rounds listing did not move past round ", req.before_round()));
          }
          req.set_before_round(page.next_before_round());
        }
        nlohmann::json j = nlohmann::json::array();
        Table t({"round", "state", "opened (UTC)", "seconds", "sampled", "contributors", "|update|", "epsilon",
                 "aggregation / abort reason"});
        for (const auto& x : r.rounds()) {
          j.push_back({{"round", x.round()}, {"state", x.state()}, {"opened_unix", x.opened_unix()},
                       {"closed_unix", x.closed_unix()}, {"metrics_json", x.metrics_json()}, {"abort_reason", x.abort_reason()}});
          const nlohmann::json m = nlohmann::json::parse(x.metrics_json(), nullptr, /*allow_exceptions=*/false);
          auto number = [&m](const char* key) -> std::string {
            if (!m.is_object() || !m.contains(key)) return "-";
            if (m[key].is_string() && m[key].get<std::string>() == "inf") return "inf";
            if (!m[key].is_number()) return "-";
            return absl::StrFormat("%.4g", m[key].get<double>());
          };
          auto count = [&m](const char* key) -> std::string {
            if (!m.is_object() || !m.contains(key)) return "-";
            const nlohmann::json& v = m[key];
            if (v.is_array()) return absl::StrCat(v.size());
            return v.is_number_integer() ? absl::StrCat(v.get<int64_t>()) : "-";
          };
          const bool closed = x.closed_unix() > 0;
          t.AddRow({absl::StrFormat("%d", x.round()), x.state(), FormatUtc(x.opened_unix()),
                    closed ? absl::StrFormat("%d", x.closed_unix() - x.opened_unix()) : "-", count("sampled"),
                    count("contributors"), number("update_norm"), number("epsilon"),
                    x.state() == "aborted" ? x.abort_reason()
                    : m.is_object() && m.contains("aggregation") && m["aggregation"].is_string()
                        ? m["aggregation"].get<std::string>()
                        : "-"});
        }
        if (a->json) {
          std::cout << j.dump(2) << "\n";
        } else {
          std::cout << t.Render();
          const int64_t older = r.total_rounds() - r.rounds_size();
          if (older > 0) {
            std::cout << absl::StrFormat("... %d older round%s (--limit 0 lists all)\n", older,
                                         older == 1 ? "" : "s");
          }
        }
      } else if (name == "clients") {
        fedpers::v1::ClientsResponse r;
        check(s->Clients(c.get(), {}, &r));
        nlohmann::json j = nlohmann::json::array();
        Table t({"client", "certificate sha256", "first seen (UTC)", "last seen (UTC)"});
        for (const auto& x : r.clients()) {
          j.push_back({{"client_id", x.client_id()}, {"cert_sha256", x.cert_fingerprint()},
                       {"first_seen_unix", x.first_seen_unix()}, {"last_seen_unix", x.last_seen_unix()}});
          // The first 16 hex digits tell certificates apart at a glance; --json has all 64.
          t.AddRow({x.client_id(), x.cert_fingerprint().empty() ? "-" : x.cert_fingerprint().substr(0, 16) + "...",
                    FormatUtc(x.first_seen_unix()), FormatUtc(x.last_seen_unix())});
        }
        std::cout << (a->json ? j.dump(2) + "\n" : t.Render());
      } else {
        fedpers::v1::UsersResponse r;  // the pages, joined
        fedpers::v1::UsersRequest req;
        bool more = false;  // users beyond --limit
        while (true) {
          req.set_limit(a->users_limit == 0 ? 0 : a->users_limit - r.users_size());
          fedpers::v1::UsersResponse page;
          check(s->Users(ctx().get(), req, &page));
          for (auto& x : *page.mutable_users()) *r.add_users() = std::move(x);
          more = !page.next_after_user_id().empty();
          if (!more || (a->users_limit > 0 && r.users_size() >= a->users_limit)) break;
          if (page.next_after_user_id() <= req.after_user_id()) {
            Fail(absl::StrCat("coordinator: the users listing did not move past '", req.after_user_id(), "'"));
          }
          req.set_after_user_id(page.next_after_user_id());
        }
        nlohmann::json j = nlohmann::json::array();
        Table t({"user", "client", "residual versions", "sealed", "bytes", "epsilon", "vs coordinator"});
        for (const auto& x : r.users()) {
          const std::optional<double> against = x.has_epsilon_against_coordinator()
                                                    ? std::optional<double>(x.epsilon_against_coordinator())
                                                    : std::nullopt;
          j.push_back({{"user_id", x.user_id()},
                       {"client_id", x.client_id()},
                       {"residual_versions", x.residual_versions()},
                       {"sealed", x.sealed()},
                       {"bytes", x.bytes()},
                       {"epsilon", EpsilonToJson(x.epsilon())},
                       {"epsilon_against_coordinator", EpsilonToJson(against)}});
          const bool stored = x.residual_versions() > 0;  // sealing and size describe the latest version
          t.AddRow({x.user_id(), x.client_id().empty() ? "-" : x.client_id(),
                    absl::StrFormat("%d", x.residual_versions()), stored ? (x.sealed() ? "yes" : "no") : "-",
                    stored ? absl::StrFormat("%d", x.bytes()) : "-", absl::StrFormat("%.4f", x.epsilon()),
                    against ? absl::StrFormat("%.4f", *against) : "unknown"});
        }
        std::cout << (a->json ? j.dump(2) + "\n" : t.Render());
        if (!a->json && more) std::cout << "... more users follow (--limit 0 lists all)\n";
      }
    });
  }
  (void)global;
}

}  // namespace fedpers::cli
