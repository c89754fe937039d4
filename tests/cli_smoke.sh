#!/usr/bin/env bash
# End-to-end check of the CLI: pretrain (with resume), finetune, exports,
# JSON output and clear errors on bad input.
set -euo pipefail
fedpers="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/small.json" <<'JSON'
{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32, "vocab_size": 259, "fedpers_tokenizer": "byte"}
JSON
corpus="synthetic:users=4,bytes=3000,seed=2"

"$fedpers" -q pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/base" \
  --steps 6 --batch-size 4 --checkpoint-every 3 --json > "$work/pre.json"
grep -q '"steps": 6' "$work/pre.json"
test -f "$work/base/model.safetensors" && test -f "$work/base/config.json"
test "$(cat "$work/base/latest")" = "checkpoint-6"

# Rerunning with more steps and the same options is refused (the schedule differs) ...
if "$fedpers" -q pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/base" \
     --steps 9 --batch-size 4 --checkpoint-every 3 2> "$work/err.txt"; then
  echo "expected a refusal to resume with other options"; exit 1
fi
grep -q "other options" "$work/err.txt"
# ... and the same run resumes from its last checkpoint.
"$fedpers" -q pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/base" \
  --steps 6 --batch-size 4 --checkpoint-every 3 --json > "$work/pre2.json"
grep -q '"resumed_at_step": 6' "$work/pre2.json"

# Interruption: SIGINT writes a checkpoint and says how to resume; SIGKILL
# loses at most the steps since the last checkpoint; both resume.
"$fedpers" -q pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/int" \
  --steps 100000 --batch-size 4 --checkpoint-every 25 2> "$work/int.err" &
pid=$!
for _ in $(seq 1 200); do [ -f "$work/int/latest" ] && break; sleep 0.05; done
kill -INT "$pid"
if wait "$pid"; then echo "expected a non-zero exit after SIGINT"; exit 1; fi
grep -q "Run the same command again to resume" "$work/int.err"
"$fedpers" -q pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/int" \
  --steps 100000 --batch-size 4 --checkpoint-every 25 > /dev/null 2>&1 &
pid=$!
sleep 1
kill -KILL "$pid"; wait "$pid" || true
step=$(sed 's/checkpoint-//' "$work/int/latest")
test "$step" -gt 0
test -f "$work/int/checkpoint-$step/state.json"
"$fedpers" pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/int" \
  --steps 100000 --batch-size 4 --checkpoint-every 25 2> "$work/resume.err" &
pid=$!
for _ in $(seq 1 100); do grep -q "resuming from" "$work/resume.err" && break; sleep 0.05; done
kill -INT "$pid"; wait "$pid" || true
grep -q "resuming from .*checkpoint-$step at step $step" "$work/resume.err"

"$fedpers" -q finetune --base "$work/base" --data "$corpus" --user user0001 --out "$work/ft" \
  --steps 4 --batch-size 4 > "$work/ft.txt"
grep -q "before" "$work/ft.txt" && grep -q "after" "$work/ft.txt"
for f in adapter_global.safetensors adapter_residual.safetensors peft_global/adapter_config.json \
         peft_global/adapter_model.safetensors peft_global_residual/adapter_config.json finetune_summary.json; do
  test -f "$work/ft/$f" || { echo "missing $f"; exit 1; }
done

# Bad input: clear errors, non-zero exit, no crash.
expect_error() {
  local pattern="$1"; shift
  if "$@" > /dev/null 2> "$work/err.txt"; then echo "expected failure: $*"; exit 1; fi
  grep -q -e "$pattern" "$work/err.txt" || { echo "wrong error for $*:"; cat "$work/err.txt"; exit 1; }
}
expect_error "excludes" "$fedpers" -q simulate --target-epsilon 5 --noise-multiplier 1 --out "$work/x"
expect_error "a sweep varies the noise multiplier or the target epsilon, not both" \
  "$fedpers" -q sweep --data "$corpus" --users 4 --clients-per-round 2 --target-epsilon 5 --noise-multiplier 1 \
  --out "$work/x"
expect_error "is not in corpus" "$fedpers" -q finetune --base "$work/base" --data "$corpus" --user nobody --out "$work/x"
expect_error "model directory" "$fedpers" -q finetune --base "$work/none" --data "$corpus" --user user0001 --out "$work/x"
expect_error "unknown corpus spec" "$fedpers" -q pretrain --corpus "ftp://x" --out "$work/x"
expect_error "unknown model config" "$fedpers" -q pretrain --corpus "$corpus" --config huge --out "$work/x"
expect_error "required" "$fedpers" pretrain --corpus "$corpus"
expect_error "shakespeare:DIR" "$fedpers" -q data users --data "ftp://x"
expect_error "needs --identity" "$fedpers" -q admin status --coordinator 127.0.0.1:1 --insecure
head -c 100 "$work/base/model.safetensors" > "$work/trunc.safetensors"
mkdir -p "$work/trunc" && cp "$work/base/config.json" "$work/trunc/" && mv "$work/trunc.safetensors" "$work/trunc/model.safetensors"
expect_error "truncated" "$fedpers" -q finetune --base "$work/trunc" --data "$corpus" --user user0001 --out "$work/x"
# PKI: a CA, a coordinator and a client certificate that verify with openssl.
"$fedpers" pki init --dir "$work/ca" > /dev/null
"$fedpers" pki issue --dir "$work/ca" --role coordinator --name coord --out "$work/certs" > /dev/null
"$fedpers" pki issue --dir "$work/ca" --role client --name partner-a --out "$work/certs" --json > "$work/issue.json"
grep -q '"role": "client"' "$work/issue.json"
if command -v openssl > /dev/null; then
  openssl verify -CAfile "$work/ca/ca.crt" "$work/certs/coord.crt" "$work/certs/partner-a.crt" > /dev/null
fi
test "$(stat -c %a "$work/certs/partner-a.key")" = "600"
expect_error "already holds a CA" "$fedpers" pki init --dir "$work/ca"
expect_error "role" "$fedpers" pki issue --dir "$work/ca" --role root --name x
expect_error "coordinator certificates only" "$fedpers" pki issue --dir "$work/ca" --role client --name b --host b.example
expect_error "host 'a.example,DNS:b.example' is neither an IP address nor a host name" \
  "$fedpers" pki issue --dir "$work/ca" --role coordinator --name c2 --host a.example,DNS:b.example
test ! -e "$work/ca/b.crt" && test ! -e "$work/ca/c2.crt"
# A damaged checkpoint is refused, naming the file, rather than resumed.
cp -r "$work/base" "$work/badck"
python3 - "$work/badck/checkpoint-6/state.json" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
state["step"] = 99
json.dump(state, open(sys.argv[1], "w"))
PY
pre=(-q pretrain --corpus "$corpus" --config "$work/small.json" --out "$work/badck" --steps 6 --batch-size 4
     --checkpoint-every 3)
expect_error "checkpoint-6/state.json' says step 99, not one of this run's 0 to 6" "$fedpers" "${pre[@]}"
: > "$work/badck/latest"
expect_error "latest' should name a checkpoint directory" "$fedpers" "${pre[@]}"
# Local training settings are refused before anything loads (no base model
# at $work/none) and, what only the model tells, before connecting.
client=(client run --coordinator 127.0.0.1:1 --data "$corpus" --user user0001 --insecure --identity p)
expect_error "schedule: .*sideways" "$fedpers" "${client[@]}" --base "$work/none" --schedule sideways
expect_error "must be positive, got 0" "$fedpers" "${client[@]}" --base "$work/none" --residual-lr 0
# The messages name the flags, not the experiment config's keys.
expect_error "Value 2000 not in range 0 to 256" "$fedpers" --threads 2000 data users --data "$corpus"
expect_error "Value 999 not in range 0 to 256" "$fedpers" bench simulate --workers 999
expect_error "--rounds must be at least 1" "$fedpers" bench simulate --rounds 0
expect_error "--user 'user0001' is given twice" "$fedpers" "${client[@]}" --base "$work/none" --user user0001
expect_error "--users: '99999999999999999999' is out of range" "$fedpers" simulate --users 99999999999999999999
expect_error "--user: a user id must not contain control characters (byte 0x1b at offset 2)" \
  "$fedpers" "${client[@]}" --base "$work/none" --user "$(printf 'ev\033[2Jil')"
expect_error "--state-dir: the value is empty" "$fedpers" "${client[@]}" --base "$work/none" --state-dir ""
expect_error "--out: the value is empty" "$fedpers" simulate --out ""
expect_error "--global-steps (0) and --residual-steps (0) must be non-negative, not both 0" \
  "$fedpers" "${client[@]}" --base "$work/none" --global-steps 0 --residual-steps 0
expect_error "--seq-len 33 exceeds the model's n_positions (32)" "$fedpers" "${client[@]}" --base "$work/base" \
  --seq-len 33

# A narrow fixed ring with noise: the coordinator says at start what the
# discreteness of the noise costs in epsilon.
cat > "$work/narrow.json" <<JSON
{"listen": "127.0.0.1:0", "state_dir": "$work/narrow-state", "base": "$work/base", "insecure": true,
 "round": {"clients_per_round": 10, "min_clients": 8, "ring_bits": 10, "noise_multiplier": 0.02}}
JSON
"$fedpers" coordinator serve --config "$work/narrow.json" 2> "$work/narrow.err" &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on port" "$work/narrow.err" && break; sleep 0.1; done
kill "$pid"
wait "$pid" || true
grep -q "WARNING: a 10-bit ring leaves each of 10 clients .* ring steps of noise" "$work/narrow.err" ||
  { cat "$work/narrow.err"; exit 1; }

"$fedpers" --help | grep -q pretrain
"$fedpers" bench train --help | grep -q peer
echo "cli smoke: ok"
