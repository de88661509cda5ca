#!/usr/bin/env bash
# Runs a three-node Quiver cluster on this machine, in the foreground; Ctrl-C stops it.
#
#   scripts/cluster-local.sh [DIR]      (default DIR: ./cluster-local)
#
# Writes the cluster CA, certificates and configs into DIR once (`quiver cluster init`),
# starts the three nodes with their logs in DIR/node-N.log, waits until they have elected a
# leader, and prints how to use them. Peer ports 7500-7502; node N serves QUIC on
# 74N0, HTTP on 74N1, NSQ TCP on 74N2 and the nsqd HTTP API on 74N3 (N = 0, 1, 2).
# QUIVER=path/to/quiver uses that binary instead of building target/release/quiver.
set -euo pipefail

cd "$(dirname "$0")/.."
dir=${1:-cluster-local}
quiver=${QUIVER:-target/release/quiver}
if [ -z "${QUIVER:-}" ]; then
    cargo build --release --quiet
fi

if [ ! -f "$dir/cluster.toml" ]; then
    "$quiver" cluster init --dir "$dir" --nodes 3 >/dev/null
fi

pids=()
stop() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

for n in 1 2 3; do
    NO_COLOR=1 "$quiver" serve --config "$dir/node-$n.toml" >"$dir/node-$n.log" 2>&1 &
    pids+=($!)
done

# The HTTP admin address of each node, from its config.
http_of() {
    sed -n 's/^http = "\(.*\)"$/\1/p' "$dir/node-$1.toml" | head -n 1
}

echo "starting three nodes (logs: $dir/node-N.log)"
for _ in $(seq 1 300); do
    for p in "${pids[@]}"; do
        if ! kill -0 "$p" 2>/dev/null; then
            echo "a node stopped at start; its log:" >&2
            tail -n 20 "$dir"/node-*.log >&2
            exit 1
        fi
    done
    if "$quiver" cluster status --http "$(http_of 1)" 2>/dev/null | grep -q "meta leader [0-9]"; then
        "$quiver" cluster status --http "$(http_of 1)"
        cat <<EOF

The cluster is up. In another shell (any node will do; clients follow the leader):
  $quiver pub --ca $dir/ca.pem --addr 127.0.0.1:7400 orders hello
  $quiver sub --ca $dir/ca.pem --addr 127.0.0.1:7410 orders c --count 1
  $quiver cluster status --http $(http_of 2)
Ctrl-C stops the three nodes; their data stays in $dir.
EOF
        wait -n "${pids[@]}" || true
        echo "a node stopped; stopping the others" >&2
        exit 1
    fi
    sleep 0.1
done
echo "no leader after 30 s; the logs:" >&2
tail -n 20 "$dir"/node-*.log >&2
exit 1
