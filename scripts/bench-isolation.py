#!/usr/bin/env python3
"""Plugin isolation benchmark: how much a slow router on one topic costs everyone else.

Each round starts two brokers in turn:
  - `plain`: no rules at all;
  - `loaded`: a router that burns about 8 ms of CPU per message (`slow_router`) bound to
    topic `a`, with four `quiver bench` publishers keeping it busy.
In both, it measures PUBs to the unrelated topic `b` (one at a time, at a fixed rate, with
`quiver bench`) and `GET /ping` on the admin API, and prints p50/p99 of each, then the
medians over the rounds and the loaded/plain ratios.

Usage: scripts/bench-isolation.py [--rounds 3] [--bin target/release/quiver]
Needs a release build and the plugins built (`cargo test` builds them, or
`cargo build --manifest-path plugins/Cargo.toml --release --target wasm32-wasip2`).
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "plugins/target/wasm32-wasip2/release/slow_router.wasm")


def start(binary, data, rules=None):
    cmd = [binary, "serve", "--data-dir", data, "--quic", "127.0.0.1:0",
           "--http", "127.0.0.1:0", "--nsq-tcp", "off", "--nsq-http", "off"]
    if rules:
        cmd += ["--rules", rules]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    quic = http_addr = fingerprint = None
    for line in proc.stdout:
        words = line.split()
        if words[:1] == ["QUIC"]:
            quic = words[1]
        elif words[:1] == ["HTTP"]:
            http_addr = words[1].replace("http://", "")
        elif words[:1] == ["sha256"]:
            fingerprint = words[1]
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, quic, http_addr, fingerprint


def pings(addr, n, every):
    host, port = addr.rsplit(":", 1)
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("GET", "/ping")
        conn.getresponse().read()
        conn.close()
        lat.append((time.perf_counter() - t0) * 1e3)
        time.sleep(every)
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]


def measure(binary, quic, http_addr, fingerprint):
    result = {}
    t = threading.Thread(target=lambda: result.update(ping=pings(http_addr, 300, 0.01)))
    t.start()
    out = subprocess.run(
        [binary, "bench", "--addr", quic, "--fingerprint", fingerprint, "--topic", "b",
         "--consumers", "0", "--batch", "1", "--pipeline", "1", "--rate", "300",
         "--count", "1500", "--no-progress", "--json"],
        capture_output=True, text=True, check=True).stdout
    t.join()
    report = json.loads(out)
    pub = report["publish_latency_us"]
    return pub["p50"] / 1e3, pub["p99"] / 1e3, result["ping"][0], result["ping"][1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/quiver"))
    ap.add_argument("--iterations", default="7400000", help="slow_router loop; ~8 ms here")
    args = ap.parse_args()
    rows = {"plain": [], "loaded": []}
    for r in range(args.rounds):
        for mode in ("plain", "loaded"):
            with tempfile.TemporaryDirectory() as tmp:
                rules = None
                if mode == "loaded":
                    rules = os.path.join(tmp, "rules.toml")
                    with open(rules, "w") as f:
                        f.write('[[topic]]\nname = "a"\n[topic.router]\n'
                                f'plugin = "{GUEST}"\n'
                                f'params = {{ iterations = "{args.iterations}", channel = "c" }}\n')
                proc, quic, http_addr, fp = start(args.bin, os.path.join(tmp, "data"), rules)
                load = None
                try:
                    if mode == "loaded":
                        load = subprocess.Popen(
                            [args.bin, "bench", "--addr", quic, "--fingerprint", fp,
                             "--topic", "a", "--consumers", "0", "--producers", "4",
                             "--batch", "50", "--duration", "600s", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(1)
                    row = measure(args.bin, quic, http_addr, fp)
                    if mode == "loaded":
                        host, port = http_addr.rsplit(":", 1)
                        conn = http.client.HTTPConnection(host, int(port), timeout=60)
                        conn.request("GET", "/stats")
                        stats = json.loads(conn.getresponse().read())
                        calls = stats["rules"]["bindings"][0]["stats"]["calls"]
                        print(f"  the router made {calls} calls on topic a meanwhile", flush=True)
                finally:
                    if load:
                        load.kill()
                        load.wait()
                    proc.kill()
                    proc.wait()
            rows[mode].append(row)
            print(f"round {r + 1} {mode:6}: PUB b p50 {row[0]:.3f} ms p99 {row[1]:.3f} ms | "
                  f"/ping p50 {row[2]:.3f} ms p99 {row[3]:.3f} ms", flush=True)
    med = {m: [statistics.median(c) for c in zip(*rows[m])] for m in rows}
    for m in ("plain", "loaded"):
        p = med[m]
        print(f"median {m:6}: PUB b p50 {p[0]:.3f} ms p99 {p[1]:.3f} ms | "
              f"/ping p50 {p[2]:.3f} ms p99 {p[3]:.3f} ms")
    ratio = [l / p for l, p in zip(med["loaded"], med["plain"])]
    print(f"loaded/plain: PUB p50 {ratio[0]:.2f}x p99 {ratio[1]:.2f}x | "
          f"/ping p50 {ratio[2]:.2f}x p99 {ratio[3]:.2f}x")


if __name__ == "__main__":
    main()
