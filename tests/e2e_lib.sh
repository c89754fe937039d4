# Shared set-up of the multi-process tests: a scratch directory removed on
# exit (with every process the test started), a small base model, a CA with
# coordinator, admin and client certificates, and coordinator and client
# launchers. Source it after setting `fedpers`.

work=$(mktemp -d)
coord_pid=""
e2e_cleanup() {
  [ -n "$coord_pid" ] && kill -KILL "$coord_pid" 2> /dev/null || true
  jobs -p | xargs -r kill 2> /dev/null || true
  rm -rf "$work"
}
trap e2e_cleanup EXIT

e2e_setup() {
  local clients="$1"
  cat > "$work/small.json" <<'JSON'
{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32, "vocab_size": 259, "fedpers_tokenizer": "byte"}
JSON
  corpus="synthetic:users=$((clients > 6 ? clients : 6)),bytes=3000,seed=4"
  "$fedpers" -q pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/base" --steps 4 --batch-size 4 > /dev/null
  "$fedpers" pki init --dir "$work/ca" > /dev/null
  "$fedpers" pki issue --dir "$work/ca" --role coordinator --name coord --out "$work/certs" > /dev/null
  "$fedpers" pki issue --dir "$work/ca" --role admin --name ops --out "$work/certs" > /dev/null
  for i in $(seq 1 "$clients"); do
    "$fedpers" pki issue --dir "$work/ca" --role client --name "partner$i" --out "$work/certs" > /dev/null
  done
}

# Writes $work/serve.json: e2e_serve_config LISTEN ROUND_JSON EXTRA_JSON
e2e_serve_config() {
  cat > "$work/serve.json" <<JSON
{"listen": "$1", "state_dir": "$work/state", "base": "$work/base",
 "tls": {"cert": "$work/certs/coord.crt", "key": "$work/certs/coord.key", "ca": "$work/certs/ca.crt"},
 "round": $2, $3}
JSON
}

# Starts the coordinator; sets coord_pid and port.
e2e_start_coordinator() {
  "$fedpers" coordinator serve --config "$work/serve.json" 2>> "$work/coord.log" &
  coord_pid=$!
  local before
  before=$(grep -c "listening on port" "$work/coord.log" 2> /dev/null || true)
  for _ in $(seq 1 100); do
    [ "$(grep -c "listening on port" "$work/coord.log" 2> /dev/null || true)" -gt "$before" ] && break
    sleep 0.1
  done
  port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$work/coord.log" | tail -n 1)
  test -n "$port"
}

# Starts client i for user i-1 in the background, appending its pid to pids:
# e2e_start_client I ROUNDS [EXTRA CLIENT FLAGS...]
e2e_start_client() {
  local i="$1" rounds="$2"
  shift 2
  "$fedpers" --threads 1 -q client run --coordinator "127.0.0.1:$port" --data "$corpus" \
    --user "$(printf 'user%04d' $((i - 1)))" --base "$work/base" --tls-dir "$work/certs" --name "partner$i" \
    --state-dir "$work/client$i" --rounds "$rounds" --global-steps 3 --residual-steps 2 --batch-size 4 "$@" \
    > "$work/client$i.log" 2>&1 &
  pids+=($!)
}

# Runs an admin command as the admin certificate: e2e_admin SUBCOMMAND [FLAGS...]
e2e_admin() {
  local what="$1"
  shift
  "$fedpers" admin "$what" --coordinator "127.0.0.1:$port" --tls-dir "$work/certs" --name ops "$@"
}

# Waits (up to 60 s) until the coordinator reports N eligible users.
e2e_wait_eligible() {
  for _ in $(seq 1 300); do
    if e2e_admin status --json 2> /dev/null | grep -q "\"eligible_users\": $1,"; then return 0; fi
    sleep 0.2
  done
  echo "fewer than $1 users became eligible"
  e2e_admin status || true
  return 1
}
