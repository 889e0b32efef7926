#!/bin/bash
# The CPU `detflow fan` spends per image: one series of FRAMES 1024x1024 u16 bslz4 images
# (the simulator's, about 0.5 MB each) from `stream2-send` through `fan --ranks 1` into
# `acquire --backend stream2`, all on 127.0.0.1. The fan's --json summary gives its process
# CPU (getrusage: its thread and libzmq's I/O thread) over the series; printed per image.
#
#   cargo build --release && benches/fan_cpu.sh target/release/detflow 1000 block
set -euo pipefail
BIN=${1:?usage: fan_cpu.sh DETFLOW_BINARY [FRAMES] [drop|block]}
N=${2:-1000}
POLICY=${3:-block}
P1=$((20000 + RANDOM % 20000))
P2=$((P1 + 1))
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$BIN" fan --from tcp://127.0.0.1:$P1 --ranks 1 --bind tcp://127.0.0.1:$P2 --series 1 \
    --json --policy "$POLICY" >"$OUT/fan.json" 2>"$OUT/fan.log" &
FAN=$!
"$BIN" acquire --backend stream2 --stream2-connect tcp://127.0.0.1:$P2 --path "$OUT" \
    --name r --json --frames "$N" >"$OUT/acq.json" 2>"$OUT/acq.log" &
ACQ=$!
# The rank's start is only sent once its consumer is connected: wait for the fan to say so.
timeout 60 grep -q -m1 "consumer connected" <(tail -F -n +1 "$OUT/fan.log" 2>/dev/null)
"$BIN" stream2-send --bind tcp://127.0.0.1:$P1 --size 1024x1024 --dtype u16 --compress bslz4 \
    --frames "$N" --sndhwm 0 --json >"$OUT/send.json" 2>"$OUT/send.log"
wait $FAN
wait $ACQ
python3 - "$OUT" <<'PY'
import json, sys
d = sys.argv[1]
f = json.load(open(d + "/fan.json"))
r, n = f["ranks"][0], f["images_in"]
print(json.dumps({
    "images_in": n, "sent": r["sent"], "dropped": r["dropped"],
    "mb_per_image": round(r["bytes"] / max(r["sent"], 1) / 1e6, 3),
    "fps": round(n / f["elapsed_s"], 1),
    "fan_cpu_us_per_image": round(1e6 * f["cpu_s"] / n, 1),
    "fan_busy": round(f["cpu_s"] / f["elapsed_s"], 3),
}))
PY
