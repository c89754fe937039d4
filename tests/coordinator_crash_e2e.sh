#!/usr/bin/env bash
# The coordinator killed with SIGKILL at random moments, 10 times, while 4
# client processes keep training over mutual TLS. After every kill the
# database passes PRAGMA integrity_check and holds every round committed
# before the kill; `serve` restarts from the last committed round, clients
# rejoin, and rounds keep committing. At the end every stored global
# adapter and residual blob matches its recorded SHA-256.
set -euo pipefail
fedpers="$1"
source "$(dirname "$0")/e2e_lib.sh"

e2e_setup 4
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
e2e_serve_config "127.0.0.1:$port" '{"clients_per_round": 4, "min_clients": 3, "threshold": 3, "clip_norm": 10.0}' \
  '"stage_timeout_ms": 2000, "max_rounds": 0'
db="$work/state/state.sqlite3"
committed() { sqlite3 "file:$db?mode=ro" "SELECT COALESCE(MAX(round), 0) FROM rounds WHERE state = 'committed'" 2> /dev/null || echo 0; }

e2e_start_coordinator
pids=()
for i in 1 2 3 4; do e2e_start_client "$i" 100000; done

for kill in $(seq 1 10); do
  sleep "$(python3 -c "import random; random.seed($kill); print(round(random.uniform(1.0, 4.0), 2))")"
  before=$(committed)
  kill -KILL "$coord_pid"
  wait "$coord_pid" 2> /dev/null || true
  coord_pid=""
  test "$(sqlite3 "$db" 'PRAGMA integrity_check')" = "ok"
  after=$(committed)
  if [ "$after" -lt "$before" ]; then echo "kill $kill: committed round $before lost (now $after)"; exit 1; fi
  e2e_start_coordinator
done

# Rounds keep committing after the last restart.
target=$(( $(committed) + 2 ))
for _ in $(seq 1 600); do [ "$(committed)" -ge "$target" ] && break; sleep 0.2; done
test "$(committed)" -ge "$target"
echo "committed rounds after 10 SIGKILLs: $(committed); aborted: $(sqlite3 "$db" "SELECT COUNT(*) FROM rounds WHERE state = 'aborted'")"

kill -TERM "$coord_pid"
wait "$coord_pid" || true
coord_pid=""
test "$(sqlite3 "$db" 'PRAGMA integrity_check')" = "ok"
# Every global adapter file and residual blob matches its hash.
sqlite3 -separator ' ' "$db" "SELECT path, sha256 FROM global_versions" | while read -r path sha; do
  test "$(sha256sum "$work/state/global/$path" | cut -d' ' -f1)" = "$sha"
done
sqlite3 -separator ' ' "$db" "SELECT user_id, version, sha256 FROM residuals" | while read -r user version sha; do
  sqlite3 "$db" "SELECT writefile('$work/blob', blob) FROM residuals WHERE user_id = '$user' AND version = $version" > /dev/null
  test "$(sha256sum "$work/blob" | cut -d' ' -f1)" = "$sha"
done
test "$(sqlite3 "$db" "SELECT COUNT(*) FROM residuals")" -gt 0
echo "coordinator crash e2e: ok"
