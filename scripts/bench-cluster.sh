#!/usr/bin/env bash
# Benchmarks a three-node cluster on this machine: `quiver bench` publishing and consuming
# through the topic's leader, replication factor 3, for each fsync policy given; then the
# peak RSS of each node. Runs in a network namespace of its own (root, `unshare -n`), so the
# nodes' fixed ports clash with nothing.
#
#   scripts/bench-cluster.sh [POLICY...]      (default: interval:10ms always)
#
# Environment: QUIVER (binary, default target/release/quiver, built if missing),
# PRODUCERS (16), CONSUMERS (4), SIZE (100), DURATION (20s), BATCH (bench's default),
# PIPELINE (bench's default), RUNS (1), OUT (directory for the JSON reports, default a
# temporary one).
set -euo pipefail

if [ -z "${QUIVER_BENCH_NETNS:-}" ]; then
    cd "$(dirname "$0")/.."
    if [ -z "${QUIVER:-}" ]; then
        cargo build --release --quiet
        export QUIVER=$PWD/target/release/quiver
    fi
    export QUIVER_BENCH_NETNS=1
    exec unshare -n "$0" "$@"
fi

ip link set lo up
policies=("$@")
[ ${#policies[@]} -gt 0 ] || policies=(interval:10ms always)
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
bench_args=(--producers "${PRODUCERS:-16}" --consumers "${CONSUMERS:-4}" --size "${SIZE:-100}"
    --duration "${DURATION:-20s}" --json --no-progress)
[ -n "${BATCH:-}" ] && bench_args+=(--batch "$BATCH")
[ -n "${PIPELINE:-}" ] && bench_args+=(--pipeline "$PIPELINE")

pids=()
stop() {
    if [ ${#pids[@]} -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    pids=()
}
trap stop EXIT

for policy in "${policies[@]}"; do
    for run in $(seq 1 "${RUNS:-1}"); do
        dir=$(mktemp -d)
        "$QUIVER" cluster init --dir "$dir" --nodes 3 >/dev/null
        for n in 1 2 3; do
            printf '\n[storage]\nfsync = "%s"\n' "$policy" >>"$dir/node-$n.toml"
            NO_COLOR=1 "$QUIVER" serve --config "$dir/node-$n.toml" >"$dir/node-$n.log" 2>&1 &
            pids+=($!)
        done
        for _ in $(seq 1 300); do
            "$QUIVER" cluster status --http 127.0.0.1:7401 2>/dev/null | grep -q "meta leader [0-9]" && break
            sleep 0.1
        done
        report="$out/${policy//[:\/]/_}-$run.json"
        "$QUIVER" bench --addr 127.0.0.1:7400 --ca "$dir/ca.pem" "${bench_args[@]}" >"$report"
        rss=""
        for i in 0 1 2; do
            kb=$(awk '/VmHWM/ {print $2}' "/proc/${pids[$i]}/status")
            rss+="node$((i + 1))=$((kb / 1024))MiB "
        done
        leader=$("$QUIVER" cluster status --http 127.0.0.1:7401 --json |
            python3 -c 'import json,sys; s=json.load(sys.stdin); print([t["group"]["leader"] if t["group"] else "?" for t in s["topics"] if t["topic"]=="bench"])' 2>/dev/null || echo "?")
        python3 - "$report" "$policy" "$rss" "$leader" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("publish_latency_us", {})
e2e = r.get("latency_us", {})
print(f"{sys.argv[2]}: publish {r.get('publish_rate', 0):.0f} msgs/s, consume {r.get('consume_rate', 0):.0f} msgs/s, "
      f"confirm p50 {lat.get('p50')} us p99 {lat.get('p99')} us, end-to-end p50 {e2e.get('p50')} us p99 {e2e.get('p99')} us, errors {r.get('errors')}; "
      f"peak RSS {sys.argv[3]}; leader {sys.argv[4]}")
PY
        stop
        rm -rf "$dir"
    done
done
echo "reports in $out"
