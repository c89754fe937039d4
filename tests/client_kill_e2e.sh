#!/usr/bin/env bash
# Client processes killed with SIGKILL in each SecAgg+ stage, over gRPC with
# mutual TLS on loopback. 10 clients join a paused coordinator; once all are
# eligible an admin resumes it and every live user is sampled each round:
#   round 1: client 10 dies at keys       -> 9 of 10 survive (t = 7): commits
#   round 2: client 9 dies at shares      -> 8 of 9 (t = 6): commits
#   round 3: client 8 dies at inputs      -> 7 of 8 (t = 6): commits
#   round 4: client 7 dies at unmasking   -> its input counts, 6 unmask (t = 5): commits
#   round 5: clients 4-6 die at inputs    -> 3 of 6 (t = 4): aborts cleanly
#   round 6: the 3 live users (t = 2): commits
# Dead users are not sampled again. Every committed global adapter must equal
# the mean of its contributors' plain updates within the quantization bound.
set -euo pipefail
fedpers="$1"
source "$(dirname "$0")/e2e_lib.sh"
e2e_setup 10
e2e_serve_config "127.0.0.1:0" \
  '{"clients_per_round": 10, "min_clients": 3, "clip_norm": 10.0, "noise_multiplier": 0, "strategy": "fedavg"}' \
  '"stage_timeout_ms": 4000, "max_rounds": 5, "start_paused": true'
e2e_start_coordinator

pids=()
save=(--save-updates "$work/updates")
for i in 1 2 3; do e2e_start_client "$i" 6 "${save[@]}"; done
for i in 4 5 6; do e2e_start_client "$i" 0 "${save[@]}" --fault-kill-at 5:inputs; done
e2e_start_client 7 0 "${save[@]}" --fault-kill-at 4:unmasking
e2e_start_client 8 0 "${save[@]}" --fault-kill-at 3:inputs
e2e_start_client 9 0 "${save[@]}" --fault-kill-at 2:shares
e2e_start_client 10 0 "${save[@]}" --fault-kill-at 1:keys
e2e_wait_eligible 10
e2e_admin resume > /dev/null

# The survivors end after 6 rounds; every other client must die by SIGKILL.
for k in 0 1 2; do
  timeout 300 tail --pid="${pids[$k]}" -f /dev/null
  wait "${pids[$k]}"
done
for k in $(seq 3 9); do
  status=0
  wait "${pids[$k]}" || status=$?
  if [ "$status" -ne 137 ]; then
    echo "client $((k + 1)) ended with status $status, not by its SIGKILL"
    cat "$work/client$((k + 1)).log"
    exit 1
  fi
done
grep -q "rounds finished 6 (committed 5)" "$work/client1.log"

e2e_admin rounds --json > "$work/rounds.json"
/usr/bin/python3 - "$work/rounds.json" <<'PY'
import json, sys
rounds = {r["round"]: r for r in json.load(open(sys.argv[1]))}
want = {1: ("committed", 10, 9), 2: ("committed", 9, 8), 3: ("committed", 8, 7), 4: ("committed", 7, 7),
        5: ("aborted", None, None), 6: ("committed", 3, 3)}
for n, (state, sampled, contributors) in want.items():
    r = rounds[n]
    assert r["state"] == state, f"round {n}: {r['state']} ({r['abort_reason']}), expected {state}"
    if state == "committed":
        m = json.loads(r["metrics_json"])
        assert (m["sampled"], len(m["contributors"])) == (sampled, contributors), f"round {n}: {m}"
    else:
        print(f"round {n} aborted: {r['abort_reason']}")
assert len(rounds) == 6, sorted(rounds)
print("rounds: " + ", ".join(f"{n} {rounds[n]['state']}" for n in sorted(rounds)))
PY
/usr/bin/python3 "$(dirname "$0")/check_aggregate.py" "$work/state" "$work/updates" --expect-rounds 5

kill -TERM "$coord_pid"
wait "$coord_pid" || true
coord_pid=""
echo "client kill e2e: ok (a client killed in each SecAgg+ stage; an abort below the threshold; rounds go on)"
