#!/usr/bin/env bash
# `fedpers simulate` end to end on a small jsonl corpus with a malformed
# line, a line over the size limit and a user with empty text: without
# skipping, the run stops with an error naming the line; with
# "skip_bad_records" it pretrains its own base model on the users that do not
# federate, runs every method and writes the whole run directory; without
# SecAgg+ it gets the same figures. Then `fedpers sweep` over two noise levels.
set -euo pipefail
fedpers="$1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

/usr/bin/python3 - "$work/users.jsonl" <<'PY'
import json, random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    for u in range(10):
        words = ["w%d_%d" % (u, i) for i in range(12)] + ["the", "and", "of", "fix", "release"]
        for _ in range(40):
            f.write(json.dumps({"user_id": "user%02d" % u, "text": " ".join(random.choice(words) for _ in range(14)) + "\n"}) + "\n")
        if u == 1:
            f.write('{"user_id": "broken", "text": \n')             # malformed JSON
        if u == 3:
            f.write('{"user_id": "huge", "text": "' + "a" * (65 << 20) + '"}\n')  # over the 64 MiB limit
        if u == 5:
            f.write('{"user_id": "empty", "text": ""}\n')            # a user without text
PY
cat > "$work/small.json" <<'JSON'
{"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32, "vocab_size": 259, "fedpers_tokenizer": "byte"}
JSON
cat > "$work/sim.json" <<JSON
{"data": "jsonl:$work/users.jsonl", "users": 6, "min_user_bytes": 1000, "rounds": 2, "clients_per_round": 3,
 "pretrain": {"config": "$work/small.json", "steps": 4, "batch_size": 4},
 "local": {"global_steps": 2, "residual_steps": 2, "batch_size": 4}, "eval_tokens": 256,
 "out": "$work/run"}
JSON

# Malformed input: a clear error naming the file and line, no crash.
if "$fedpers" -q simulate --config "$work/sim.json" > "$work/out1" 2> "$work/err1"; then
  echo "a corpus with a malformed line was accepted"; exit 1
fi
grep -q "users.jsonl' line 81: not valid JSON" "$work/err1" || { cat "$work/err1"; exit 1; }

# Skipping bad records: the run completes and says what it skipped.
sed -i 's/"users": 6/"skip_bad_records": true, "users": 6/' "$work/sim.json"
"$fedpers" -q simulate --config "$work/sim.json" --json > "$work/summary.json"
/usr/bin/python3 - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
run = os.path.join(work, "run")
s = json.load(open(os.path.join(work, "summary.json")))
methods = [m["method"] for m in s["methods"]]
assert methods == ["base", "local", "global", "global+residual", "fedavg-lora", "centralized"], methods
assert s["users"] == 6 and s["pretrained_here"], s
for m in s["methods"]:
    assert 0 < m["accuracy"] < 1, m
fed = {m["method"]: m for m in s["methods"]}
for name in ["global", "global+residual", "fedavg-lora"]:
    assert fed[name]["bytes_up_per_client_round"] > 0 and fed[name]["epsilon"] > 0, fed[name]
    assert fed[name]["rounds_committed"] == 2, fed[name]
    # The coordinator knows the sample: no amplification against it (here
    # every user is sampled, so the two are equal).
    assert fed[name]["epsilon_against_coordinator"] >= fed[name]["epsilon"] > 0, fed[name]
for f in ["config.json", "metrics.jsonl", "users.csv", "summary.json", "report.md"]:
    assert os.path.getsize(os.path.join(run, f)) > 0, f
lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
# base: 2 points; every other method: round 0 and 2 rounds.
assert len(lines) == 2 + 5 * 3, len(lines)
assert sum(1 for l in lines if "eval" in l) == len(lines), "every round of a 2-round run is evaluated"
users = open(os.path.join(run, "users.csv")).read().splitlines()
assert len(users) == 1 + 6 * 6, len(users)
report = open(os.path.join(run, "report.md")).read()
assert "line 81: not valid JSON" in report and "longer than the limit" in report and "'empty'" in report, report
if os.path.exists("/usr/bin/gnuplot"):
    for p in ["accuracy_per_round", "tradeoff", "users"]:
        for ext in ["png", "svg"]:
            assert os.path.getsize(os.path.join(run, "plots", p + "." + ext)) > 1000, p
print("simulate: ok", {m: round(fed[m]["accuracy"], 4) for m in fed})
PY

# A privacy budget between what one round and two rounds cost: round 2 is
# refused, which ends the method's rounds (nothing that decides it changes in
# a simulation); the run evaluates there and the report says why it stopped.
/usr/bin/python3 - "$work/run/metrics.jsonl" > "$work/budget" <<'PY'
import json, sys
eps = {l["round"]: l["epsilon"] for l in map(json.loads, open(sys.argv[1])) if l["method"] == "global+residual"}
assert 0 < eps[1] < eps[2], eps
print((eps[1] + eps[2]) / 2)
PY
"$fedpers" -q simulate --config "$work/sim.json" --out "$work/budgeted" --methods global+residual --rounds 4 \
  --epsilon-budget "$(cat "$work/budget")" --json > "$work/budgeted.json"
/usr/bin/python3 - "$work/budgeted.json" "$work/budgeted" "$work/run/metrics.jsonl" <<'PY'
import json, os, sys
m = json.load(open(sys.argv[1]))["methods"][0]
run = sys.argv[2]
assert m["rounds_committed"] == 1 and m["rounds_aborted"] == 1, m
assert m["stopped"].startswith("stopped at round 2 of 4, which could not open"), m
assert "round 2 refused: it would raise epsilon" in m["stopped"], m
first = [l for l in map(json.loads, open(sys.argv[3])) if l["method"] == "global+residual" and l["round"] == 1][0]
assert m["epsilon"] == first["epsilon"], (m, first)
lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
assert [l["round"] for l in lines] == [0, 1, 2], lines
assert "eval" in lines[-1] and lines[-1]["eval"]["accuracy"] == m["accuracy"], lines[-1]
eps2 = [l for l in map(json.loads, open(sys.argv[3])) if l["method"] == "global+residual" and l["round"] == 2][0]
assert m["epsilon"] <= json.load(open(os.path.join(run, "config.json")))["epsilon_budget"] < eps2["epsilon"], m
report = open(os.path.join(run, "report.md")).read()
assert "global+residual: stopped at round 2 of 4" in report and ", epsilon budget " in report, report
assert json.load(open(sys.argv[1]))["epsilon_budget_against_coordinator"] == "inf"
print("epsilon budget: ok", m["epsilon"], m["stopped"])
PY

# A target epsilon: the noise multiplier is the smallest (to 0.1%) that keeps
# epsilon within it after the rounds, so the run ends just under it.
"$fedpers" -q simulate --config "$work/sim.json" --out "$work/target" --methods global+residual \
  --target-epsilon 40 --json > "$work/target.json"
/usr/bin/python3 - "$work/target.json" "$work/target/config.json" "$work/target/report.md" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
m = s["methods"][0]
assert s["target_epsilon"] == 40 and s["noise_multiplier"] is None, s
assert m["rounds_committed"] == 2 and 39.5 < m["epsilon"] <= 40, m
assert m["noise_multiplier"] > 0, m
config = json.load(open(sys.argv[2]))
assert config["target_epsilon"] == 40 and "noise_multiplier" not in config, config
assert "noise multiplier set for epsilon 40 after 2 rounds (global+residual " in open(sys.argv[3]).read()
print("target epsilon: ok", m["noise_multiplier"], m["epsilon"])
PY

# Run again: each finished method comes from its record; the one whose record
# is gone runs again, with the same figures (the run is seeded).
rm "$work/run/methods/global.json"
"$fedpers" simulate --config "$work/sim.json" --json > "$work/summary2.json" 2> "$work/resume.err"
test "$(grep -c 'finished by an earlier run' "$work/resume.err")" = 5 || { cat "$work/resume.err"; exit 1; }
! grep -q "^global: finished" "$work/resume.err"
/usr/bin/python3 - "$work/summary.json" "$work/summary2.json" "$work/run/metrics.jsonl" <<'PY'
import json, sys
first = {m["method"]: m for m in json.load(open(sys.argv[1]))["methods"]}
again = {m["method"]: m for m in json.load(open(sys.argv[2]))["methods"]}
assert list(first) == list(again), (list(first), list(again))
for name in first:
    for key in ["accuracy", "loss", "epsilon", "improved_over_global"]:  # bytes vary with random keys
        assert first[name][key] == again[name][key], (name, key, first[name][key], again[name][key])
assert len(open(sys.argv[3]).read().splitlines()) == 2 + 5 * 3, "metrics.jsonl holds every round again"
print("simulate resume: ok")
PY
# --fresh reuses nothing.
"$fedpers" simulate --config "$work/sim.json" --methods base --fresh > /dev/null 2> "$work/fresh.err"
! grep -q "finished by an earlier run" "$work/fresh.err"

# Without SecAgg+ (plain aggregation): the same global+residual figures (the
# encodings and their sum are the same), fewer bytes, and the report says so.
"$fedpers" -q simulate --config "$work/sim.json" --out "$work/plain" --methods global+residual --no-secure-agg \
  --json > "$work/plain.json"
/usr/bin/python3 - "$work/summary.json" "$work/plain.json" "$work/plain/report.md" <<'PY'
import json, sys
secure = {m["method"]: m for m in json.load(open(sys.argv[1]))["methods"]}["global+residual"]
plain = json.load(open(sys.argv[2]))["methods"][0]
assert plain["method"] == "global+residual", plain
assert plain["accuracy"] == secure["accuracy"] and plain["loss"] == secure["loss"], (plain, secure)
assert plain["bytes_up_per_client_round"] < secure["bytes_up_per_client_round"], (plain, secure)
assert "Plain aggregation (no SecAgg+)" in open(sys.argv[3]).read()
print("plain aggregation: ok", plain["bytes_up_per_client_round"], "bytes up vs", secure["bytes_up_per_client_round"])
PY

# The memory settings (micro-batches of 2 windows, activations recomputed in
# backward) learn the same thing up to float summation order.
sed 's/"batch_size": 4}, "eval_tokens"/"batch_size": 4, "micro_batch_size": 2, "recompute_activations": true}, "eval_tokens"/' \
  "$work/sim.json" > "$work/lean.json"
grep -q '"recompute_activations": true' "$work/lean.json" || { echo "lean config not written"; exit 1; }
"$fedpers" -q simulate --config "$work/lean.json" --out "$work/lean" --methods global+residual --json > "$work/lean_summary.json"
/usr/bin/python3 - "$work/summary.json" "$work/lean_summary.json" "$work/lean/config.json" <<'PY'
import json, sys
whole = {m["method"]: m for m in json.load(open(sys.argv[1]))["methods"]}["global+residual"]
lean = json.load(open(sys.argv[2]))["methods"][0]
local = json.load(open(sys.argv[3]))["local"]
assert local["micro_batch_size"] == 2 and local["recompute_activations"] is True, local
assert abs(lean["loss"] - whole["loss"]) <= 1e-3 * whole["loss"], (lean, whole)
assert abs(lean["accuracy"] - whole["accuracy"]) <= 0.01, (lean, whole)
print("memory settings: ok", lean["loss"], "against", whole["loss"])
PY

# A sweep over two noise levels on the same base model.
"$fedpers" -q sweep --config "$work/sim.json" --out "$work/sweep" --noise-multiplier 0,0.5 --json > "$work/sweep.json"
/usr/bin/python3 - "$work/sweep.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
pts = s["points"]
assert [p["noise_multiplier"] for p in pts] == [0, 0.5], pts
assert pts[0]["epsilon"] == "inf" and isinstance(pts[1]["epsilon"], float), pts
# Against the coordinator: infinite without noise, a positive number with it.
assert pts[0]["epsilon_against_coordinator"] == "inf", pts
assert isinstance(pts[1]["epsilon_against_coordinator"], float) and pts[1]["epsilon_against_coordinator"] > 0, pts
assert any(p["pareto"] for p in pts)
print("sweep: ok")
PY
test -s "$work/sweep/sweep.md"
grep -q "eps vs coord" "$work/sweep/sweep.md"
head -1 "$work/sweep/sweep.csv" | grep -q ",epsilon,epsilon_against_coordinator,"
test -s "$work/sweep/points/1/report.md" && test -s "$work/sweep/points/1/users.csv"
test ! -e "$work/sweep/base"  # the points used the experiment's base model, $work/run/base
# Without --out, a sweep writes beside the experiment, not into it.
"$fedpers" -q sweep --config "$work/sim.json" --noise-multiplier 0 > /dev/null
test -s "$work/run-sweep/sweep.md" && test ! -e "$work/run-sweep/base" && test ! -e "$work/run/points"

# The same sweep with a third noise level runs only the new point: the two
# finished ones come from their records (untouched) with the same figures.
touch -d '2000-01-01' "$work/sweep/points/0/sweep_point.json" "$work/sweep/points/1/sweep_point.json"
"$fedpers" -q sweep --config "$work/sim.json" --out "$work/sweep" --noise-multiplier 0,0.5,1 --json > "$work/sweep2.json"
test -z "$(find "$work/sweep/points/0" "$work/sweep/points/1" -name sweep_point.json -newermt '2001-01-01')"
test -s "$work/sweep/points/2/sweep_point.json"
/usr/bin/python3 - "$work/sweep.json" "$work/sweep2.json" <<'PY'
import json, sys
first = json.load(open(sys.argv[1]))["points"]
again = json.load(open(sys.argv[2]))["points"]
assert [p["noise_multiplier"] for p in again] == [0, 0.5, 1], again
drop = lambda p: {k: v for k, v in p.items() if k != "pareto"}
assert [drop(p) for p in again[:2]] == [drop(p) for p in first], (first, again)
print("sweep resume: ok")
PY
# A damaged record is not trusted: that point runs again and its record is rewritten.
echo '{"config": {' > "$work/sweep/points/2/sweep_point.json"
"$fedpers" sweep --config "$work/sim.json" --out "$work/sweep" --noise-multiplier 0,0.5,1 > /dev/null 2> "$work/sweep3.err"
grep -q "sweep point 2: .* is not a record of finished work; running it again" "$work/sweep3.err"
/usr/bin/python3 -c 'import json, sys; json.load(open(sys.argv[1]))["result"]' "$work/sweep/points/2/sweep_point.json"

# Target epsilons as the sweep's noise axis: each point's multiplier is set
# for its target, and the table shows both.
"$fedpers" -q sweep --config "$work/sim.json" --out "$work/target-sweep" --target-epsilon 40,400 --json \
  > "$work/target-sweep.json"
/usr/bin/python3 - "$work/target-sweep.json" "$work/target-sweep/sweep.md" <<'PY'
import json, sys
pts = json.load(open(sys.argv[1]))["points"]
assert [p["target_epsilon"] for p in pts] == [40, 400], pts
for p in pts:
    assert 0.99 * p["target_epsilon"] < p["epsilon"] <= p["target_epsilon"], p
assert pts[0]["noise_multiplier"] > pts[1]["noise_multiplier"] > 0, pts
assert "(eps 40)" in open(sys.argv[2]).read()
print("sweep over target epsilons: ok", [round(p["noise_multiplier"], 4) for p in pts])
PY
echo "simulate e2e: ok"
