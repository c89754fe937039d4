#!/usr/bin/env bash
# A coordinator and 5 client processes over mutual TLS on loopback: 3 rounds
# on small synthetic users, sealed residuals, admin views, and refusals of a
# certificate from another CA and of a client certificate used as admin.
set -euo pipefail
fedpers="$1"
work=$(mktemp -d)
coord_pid=""
cleanup() {
  [ -n "$coord_pid" ] && kill -TERM "$coord_pid" 2> /dev/null || true
  jobs -p | xargs -r kill 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/small.json" <<'JSON'
{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32, "vocab_size": 259, "fedpers_tokenizer": "byte"}
JSON
corpus="synthetic:users=6,bytes=3000,seed=4"
"$fedpers" -q pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/base" --steps 4 --batch-size 4 > /dev/null

"$fedpers" pki init --dir "$work/ca" > /dev/null
"$fedpers" pki issue --dir "$work/ca" --role coordinator --name coord --out "$work/certs" > /dev/null
"$fedpers" pki issue --dir "$work/ca" --role admin --name ops --out "$work/certs" > /dev/null
for i in 1 2 3 4 5; do "$fedpers" pki issue --dir "$work/ca" --role client --name "partner$i" --out "$work/certs" > /dev/null; done
"$fedpers" pki init --dir "$work/otherca" > /dev/null
"$fedpers" pki issue --dir "$work/otherca" --role admin --name ops --out "$work/othercerts" > /dev/null

cat > "$work/serve.json" <<JSON
{"listen": "127.0.0.1:0", "state_dir": "$work/state", "base": "$work/base",
 "tls": {"cert": "$work/certs/coord.crt", "key": "$work/certs/coord.key", "ca": "$work/certs/ca.crt"},
 "round": {"clients_per_round": 5, "min_clients": 5, "threshold": 4, "clip_norm": 10.0},
 "stage_timeout_ms": 60000, "max_rounds": 3}
JSON
"$fedpers" coordinator serve --config "$work/serve.json" 2> "$work/coord.log" &
coord_pid=$!
for _ in $(seq 1 100); do grep -q "listening on port" "$work/coord.log" && break; sleep 0.1; done
port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$work/coord.log")
test -n "$port"
addr="127.0.0.1:$port"

pids=()
for i in 1 2 3 4 5; do
  "$fedpers" --threads 1 -q client run --coordinator "$addr" --data "$corpus" --user "$(printf 'user%04d' $((i - 1)))" \
    --base "$work/base" --tls-dir "$work/certs" --name "partner$i" --state-dir "$work/client$i" \
    --rounds 3 --global-steps 3 --residual-steps 2 --batch-size 4 > "$work/client$i.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do
  timeout 200 tail --pid="$pid" -f /dev/null
  wait "$pid"
done
grep -q "rounds finished 3 (committed 3), residuals uploaded 3" "$work/client1.log"

admin=(--coordinator "$addr" --tls-dir "$work/certs" --name ops)
"$fedpers" admin status "${admin[@]}" --json > "$work/status.json"
grep -q '"last_committed_round": 3' "$work/status.json"
"$fedpers" admin rounds "${admin[@]}" > "$work/rounds.txt"
test "$(grep -c committed "$work/rounds.txt")" -eq 3
"$fedpers" admin users "${admin[@]}" --json > "$work/users.json"
grep -q '"sealed": true' "$work/users.json"
"$fedpers" admin clients "${admin[@]}" | grep -q partner5

# Refusals: an admin certificate from another CA; a client certificate used as admin.
if "$fedpers" admin status --coordinator "$addr" --tls-dir "$work/othercerts" --name ops > /dev/null 2> "$work/err1"; then
  echo "a certificate from another CA was accepted"; exit 1
fi
if "$fedpers" admin status --coordinator "$addr" --tls-dir "$work/certs" --name partner1 > /dev/null 2> "$work/err2"; then
  echo "a client certificate was accepted as admin"; exit 1
fi
grep -q "not an admin" "$work/err2"

kill -TERM "$coord_pid"
wait "$coord_pid" || true
coord_pid=""
echo "federation e2e: ok (3 rounds over mTLS, 5 clients)"
