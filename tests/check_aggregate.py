#!/usr/bin/env python3
"""Checks, from outside, what a coordinator committed against what its clients sent.

For every committed round r of STATE_DIR (the coordinator's state.sqlite3 and
global/round-r.safetensors) and the plain updates the clients saved with
`fedpers client run --save-updates UPDATES_DIR`: with FedAvg at server
learning rate 1, global_r - global_(r-1) must equal the mean of the
contributors' clipped updates up to the pipeline's documented error
(docs/privacy.md):
  - quantization: each contributor's stochastic rounding moves every rotated
    coordinate by less than one ring step, so the mean's error has L2 norm
    below sqrt(D) / scale (D: rotated length);
  - distributed noise: the contributors' discrete Gaussian shares add, per
    coordinate of the mean, noise of standard deviation z S / sqrt(n_s N)
    (n_s: the noise shares of the round, N: contributors); the measured RMS
    error must lie within 10% of the predicted one (with d coordinates its
    relative sampling error is about 1 / sqrt(2 d), under 1% here).
Exits non-zero, naming the round, when a check fails.

Usage: check_aggregate.py STATE_DIR UPDATES_DIR [--expect-rounds N]
"""
import json
import math
import os
import sqlite3
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{path}: {name} is {info['dtype']}"
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[begin:end], dtype="<f4").astype(np.float64)
    return tensors


def flat(tensors):
    return np.concatenate([tensors[name] for name in sorted(tensors)])


def update_file(updates_dir, round_no, user):
    # Mirrors UpdateFileName in client/grpc_client.cc.
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "._@-" else f"%{ord(c):02X}" for c in user)
    if not safe or safe.startswith("."):
        safe = "%" + safe
    return os.path.join(updates_dir, f"round-{round_no}", safe + ".safetensors")


def main():
    args = sys.argv[1:]
    expect = None
    if "--expect-rounds" in args:
        i = args.index("--expect-rounds")
        expect = int(args[i + 1])
        del args[i : i + 2]
    state_dir, updates_dir = args
    db = sqlite3.connect(f"file:{state_dir}/state.sqlite3?mode=ro", uri=True)
    rows = db.execute(
        "SELECT r.round, r.config_json, r.metrics_json, g.path FROM rounds r "
        "JOIN global_versions g ON g.round = r.round WHERE r.state = 'committed' ORDER BY r.round"
    ).fetchall()
    if expect is not None and len(rows) != expect:
        sys.exit(f"expected {expect} committed rounds, found {len(rows)}")
    previous = None
    checked = 0
    for round_no, config_json, metrics_json, path in rows:
        config, metrics = json.loads(config_json), json.loads(metrics_json)
        current = flat(read_safetensors(os.path.join(state_dir, "global", path)))
        if previous is None:
            previous = np.zeros_like(current)
        contributors = metrics["contributors"]
        clip, scale = config["clip_norm"], config["scale"]
        z, shares = config["noise_multiplier"], config["noise_shares"]
        deltas = []
        for user in contributors:
            f = update_file(updates_dir, round_no, user)
            if not os.path.exists(f):
                sys.exit(f"round {round_no}: no saved update for contributor {user} ({f})")
            u = flat(read_safetensors(f))
            norm = np.linalg.norm(u)
            deltas.append(u * min(1.0, clip / norm) if norm > 0 else u)
        expected = np.mean(deltas, axis=0)
        error = (current - previous) - expected
        d = error.size
        rotated = config["vector_length"]  # the ring vector, padded for the rotation
        n = len(contributors)
        err_norm = float(np.linalg.norm(error))
        if z == 0:
            bound = math.sqrt(rotated) / scale
            ok = err_norm <= bound
            what = f"|error| {err_norm:.3e} <= quantization bound {bound:.3e}"
        else:
            sigma = z * clip / math.sqrt(shares * n)
            sigma_hi = math.sqrt(sigma**2 + 1.0 / (4 * n * scale**2))
            rms = err_norm / math.sqrt(d)
            ok = 0.9 * sigma <= rms <= 1.1 * sigma_hi
            what = f"RMS error {rms:.4e} vs predicted noise {sigma:.4e} (z {z}, S {clip}, {shares} shares, {n} contributors)"
        print(f"round {round_no}: {n} contributors, |mean update| {np.linalg.norm(expected):.4e}, {what}: "
              f"{'ok' if ok else 'FAILED'}")
        if not ok:
            sys.exit(f"round {round_no}: the committed global adapter does not match the clients' updates")
        previous = current  # an aborted round in between leaves the global adapter as it was
        checked += 1
    if checked == 0:
        sys.exit("no committed round to check")


if __name__ == "__main__":
    main()
