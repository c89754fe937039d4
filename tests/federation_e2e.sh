#!/usr/bin/env bash
# A coordinator and 5 client processes over mutual TLS on loopback: 3 rounds
# on small synthetic users with clipping and distributed DP noise; each
# committed global adapter is checked against the clients' saved plain
# updates (quantization and noise error as documented); sealed residuals,
# admin views, and refusals of a certificate from another CA and of a client
# certificate used as admin.
set -euo pipefail
fedpers="$1"
source "$(dirname "$0")/e2e_lib.sh"
e2e_setup 5
"$fedpers" pki init --dir "$work/otherca" > /dev/null
"$fedpers" pki issue --dir "$work/otherca" --role admin --name ops --out "$work/othercerts" > /dev/null
e2e_serve_config "127.0.0.1:0" \
  '{"clients_per_round": 5, "min_clients": 5, "threshold": 4, "clip_norm": 0.5, "noise_multiplier": 0.1, "strategy": "fedavg"}' \
  '"stage_timeout_ms": 60000, "max_rounds": 3, "admin_page_bytes": 100'
e2e_start_coordinator
addr="127.0.0.1:$port"

pids=()
for i in 1 2 3 4 5; do e2e_start_client "$i" 3 --save-updates "$work/updates"; done
for pid in "${pids[@]}"; do
  timeout 200 tail --pid="$pid" -f /dev/null
  wait "$pid"
done
grep -q "rounds finished 3 (committed 3), residuals uploaded 3" "$work/client1.log"
/usr/bin/python3 "$(dirname "$0")/check_aggregate.py" "$work/state" "$work/updates" --expect-rounds 3

# Residuals round-trip: what the coordinator returns opens with the client's
# key to exactly what the client uploaded after round 3.
uploaded=$(sed -n 's/.*uploaded the residual of round 3, sealed, as version 3 (sha256 \([0-9a-f]*\)).*/\1/p' "$work/client1.log")
test -n "$uploaded"
client1=(--coordinator "$addr" --tls-dir "$work/certs" --name partner1)
"$fedpers" client residual get "${client1[@]}" --user user0000 --state-dir "$work/client1" \
  --out "$work/residual.safetensors" --json > "$work/residual.json"
grep -q "\"sha256\": \"$uploaded\"" "$work/residual.json"
grep -q '"round": 3' "$work/residual.json"
# A restarted client continues from the residual the coordinator kept.
pids=()
e2e_start_client 1 1
for _ in $(seq 1 100); do grep -q "restored the residual" "$work/client1.log" && break; sleep 0.2; done
grep -q "user user0000: restored the residual of round 3 from the coordinator (sha256 $uploaded)" "$work/client1.log"
kill "${pids[0]}"
wait "${pids[0]}" || true
# The same client with another state directory, hence another residual.key,
# stops rather than shadow the stored residual with a fresh one; with
# --replace-unusable-residual it starts a fresh one.
elsewhere=(--threads 1 -q client run --coordinator "$addr" --data "$corpus" --user user0000 --base "$work/base"
  --tls-dir "$work/certs" --name partner1 --state-dir "$work/elsewhere" --rounds 1)
if timeout 60 "$fedpers" "${elsewhere[@]}" > "$work/wrongkey.log" 2>&1; then
  echo "a client with another residual key ran on"; exit 1
fi
grep -q "user user0000: the residual the coordinator keeps cannot be used" "$work/wrongkey.log"
grep -q -- "--replace-unusable-residual" "$work/wrongkey.log"
"$fedpers" "${elsewhere[@]}" --replace-unusable-residual > "$work/replace.log" 2>&1 &
replace_pid=$!
for _ in $(seq 1 100); do grep -q "starting a fresh one" "$work/replace.log" && break; sleep 0.2; done
grep -q "user user0000: the stored residual cannot be used (.*); starting a fresh one" "$work/replace.log"
kill "$replace_pid"
wait "$replace_pid" || true

# Users stay bound to their client across a coordinator restart: the owner
# fetches its residual before any join; another client can neither read nor
# delete it; its owner can delete it.
kill -TERM "$coord_pid"
wait "$coord_pid" || true
e2e_start_coordinator
addr="127.0.0.1:$port"
client1=(--coordinator "$addr" --tls-dir "$work/certs" --name partner1)
"$fedpers" client residual get "${client1[@]}" --user user0000 --state-dir "$work/client1" \
  --out "$work/residual2.safetensors" --json > "$work/residual2.json"
grep -q "\"sha256\": \"$uploaded\"" "$work/residual2.json"
if "$fedpers" client residual get --coordinator "$addr" --tls-dir "$work/certs" --name partner2 --user user0000 \
  --state-dir "$work/client2" --out "$work/stolen" 2> "$work/err3"; then
  echo "another client read user0000's residual"; exit 1
fi
grep -q "belongs to another client" "$work/err3"
if "$fedpers" client residual delete --coordinator "$addr" --tls-dir "$work/certs" --name partner2 --user user0000 \
  2> "$work/err4"; then
  echo "another client deleted user0000's residual"; exit 1
fi
grep -q "belongs to another client" "$work/err4"
"$fedpers" client residual delete "${client1[@]}" --user user0000 | grep -q "3 residual versions deleted"

admin=(--coordinator "$addr" --tls-dir "$work/certs" --name ops)
"$fedpers" admin status "${admin[@]}" --json > "$work/status.json"
grep -q '"last_committed_round": 3' "$work/status.json"
"$fedpers" admin rounds "${admin[@]}" > "$work/rounds.txt"
test "$(grep -c "committed .* secagg+" "$work/rounds.txt")" -eq 3
"$fedpers" admin rounds "${admin[@]}" --limit 1 > "$work/rounds1.txt"
test "$(grep -c "committed .* secagg+" "$work/rounds1.txt")" -eq 1
grep -q "^\.\.\. 2 older rounds (--limit 0 lists all)" "$work/rounds1.txt"
"$fedpers" admin rounds "${admin[@]}" --limit 0 > "$work/rounds0.txt"
test "$(grep -c "committed .* secagg+" "$work/rounds0.txt")" -eq 3
if grep -q "older round" "$work/rounds0.txt"; then echo "--limit 0 left rounds out"; exit 1; fi
# admin_page_bytes 100 gives a round (its metrics name the contributors)
# a page of its own: the listings above and below walk several pages.
"$fedpers" admin rounds "${admin[@]}" --limit 2 > "$work/rounds2.txt"
test "$(grep -c "committed .* secagg+" "$work/rounds2.txt")" -eq 2
grep -q "^\.\.\. 1 older round (--limit 0 lists all)" "$work/rounds2.txt"
"$fedpers" admin rounds "${admin[@]}" --json > "$work/rounds.json"  # --json lists every round
test "$(/usr/bin/python3 -c 'import json, sys; print(" ".join(str(r["round"]) for r in json.load(open(sys.argv[1]))))' "$work/rounds.json")" = "3 2 1"
"$fedpers" admin users "${admin[@]}" --json > "$work/users.json"
grep -q '"sealed": true' "$work/users.json"
grep -q '"client_id": "partner3"' "$work/users.json"
users_total=$(/usr/bin/python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$work/users.json")
test "$users_total" -eq 5  # one per client, over several pages
"$fedpers" admin users "${admin[@]}" --limit 1 > "$work/users1.txt"
test "$(grep -c "^user0" "$work/users1.txt")" -eq 1
grep -q "^\.\.\. more users follow (--limit 0 lists all)" "$work/users1.txt"
"$fedpers" admin users "${admin[@]}" > "$work/users0.txt"
test "$(grep -c "^user0" "$work/users0.txt")" -eq "$users_total"
if grep -q "more users" "$work/users0.txt"; then echo "admin users left users out"; exit 1; fi
"$fedpers" admin users "${admin[@]}" --limit 3 > "$work/users3.txt"
test "$(grep -c "^user0" "$work/users3.txt")" -eq 3
grep -q "^\.\.\. more users follow" "$work/users3.txt"
# Moving a user while its client runs: the client stops, saying why.
pids=()
e2e_start_client 1 1
for _ in $(seq 1 100); do
  "$fedpers" admin status "${admin[@]}" --json | grep -q '"joined_users": 1' && break
  sleep 0.2
done
"$fedpers" admin move-user "${admin[@]}" --user user0000 --to partner2 | grep -q "user user0000 moved from client partner1 to partner2"
timeout 30 tail --pid="${pids[0]}" -f /dev/null
if wait "${pids[0]}"; then echo "client 1 ran on after its user moved"; exit 1; fi
grep -q "user0000' belongs to another client (moved to another client by an admin?)" "$work/client1.log"
"$fedpers" admin users "${admin[@]}" | grep -q "^user0000 *partner2 "
"$fedpers" admin clients "${admin[@]}" | grep -q partner5

# Refusals: an admin certificate from another CA; a client certificate used as admin.
if "$fedpers" admin status --coordinator "$addr" --tls-dir "$work/othercerts" --name ops > /dev/null 2> "$work/err1"; then
  echo "a certificate from another CA was accepted"; exit 1
fi
if "$fedpers" admin status --coordinator "$addr" --tls-dir "$work/certs" --name partner1 > /dev/null 2> "$work/err2"; then
  echo "a client certificate was accepted as admin"; exit 1
fi
grep -q "partner1.crt' is a client certificate; this needs one issued with .*--role admin" "$work/err2"

kill -TERM "$coord_pid"
wait "$coord_pid" || true
coord_pid=""
echo "federation e2e: ok (3 rounds over mTLS, 5 clients)"
