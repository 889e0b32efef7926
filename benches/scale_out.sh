#!/bin/bash
# The aggregate written rate of one detector stream written by N = 1, 2, 3 ranks, beside a
# direct stream2-send -> acquire baseline: FRAMES 1024x1024 u16 bslz4 images (the
# simulator's, about 0.5 MB each) from `stream2-send` through `fan --ranks N --policy block`
# (nothing is dropped: the chain runs at the pace of its slowest part) into N `acquire
# --backend stream2` ranks writing into DIR, all on 127.0.0.1. Every process runs under
# /usr/bin/time, whose user + system CPU (the process's whole rusage, all its threads) is
# divided by the images it handled.
#
#   cargo build --release && benches/scale_out.sh target/release/detflow 3000 /dev/shm
#
# The detector stand-in makes and encodes only DISTINCT (default 50) frames and repeats them
# (`stream2-send --distinct-frames`), so that its CPU goes mostly to the messages' copies and
# the run measures the fan and the ranks; DISTINCT=0 makes every frame (the simulator and the
# bslz4 encoder then cost about 3 ms a frame, on one core, and set the pace).
#
# Prints one JSON line per run and a table. "cores" is the CPU of every process over the
# run's wall time: on a 2-core machine, a value near 2 means the run is CPU-bound, shared
# by the detector (stream2-send), the fan and the ranks.
set -euo pipefail
BIN=${1:?usage: scale_out.sh DETFLOW_BINARY [FRAMES] [DIR]}
FRAMES=${2:-3000}
ROOT=${3:-${TMPDIR:-/tmp}}
BIN=$(realpath "$BIN")
OUT=$(mktemp -d "$ROOT/detflow-scale-out.XXXXXX")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$OUT"' EXIT
DISTINCT=${DISTINCT:-50}
TIME=(/usr/bin/time -f '{"wall_s": %e, "user_s": %U, "sys_s": %S}')
SEND=(stream2-send --size 1024x1024 --dtype u16 --compress bslz4 --frames "$FRAMES" --sndhwm 0
      --json --wait-for-consumer 60 --send-timeout 60)
if [ "$DISTINCT" != 0 ]; then
    SEND+=(--distinct-frames "$DISTINCT")
fi

# Wait (at most 60 s) until $1 holds $2 lines matching $3.
wait_lines() {
    timeout 60 grep -q -m "$2" "$3" <(tail -F -n +1 "$1" 2>/dev/null) \
        || { echo "no $2 lines \"$3\" in $1:" >&2; cat "$1" >&2; exit 1; }
}

# A writer rank: acquire from $2 into $RUN as $3, its outputs named $1.
rank() {
    "${TIME[@]}" -o "$RUN/$1.time" "$BIN" acquire --backend stream2 --stream2-connect "$2" \
        --stream2-timeout 60 --path "$RUN/data" --name "$3" --json >"$RUN/$1.json" 2>"$RUN/$1.log" &
    PIDS+=($!)
}

# One run: N ranks behind a fan, or N = 0 for the direct baseline.
run() {
    local n=$1 p=$((20000 + RANDOM % 20000))
    RUN=$OUT/n$n
    PIDS=()
    mkdir -p "$RUN/data"
    if [ "$n" = 0 ]; then
        rank rank0 "tcp://127.0.0.1:$p" direct
    else
        "${TIME[@]}" -o "$RUN/fan.time" "$BIN" fan --from "tcp://127.0.0.1:$p" --ranks "$n" \
            --bind "tcp://127.0.0.1:$((p + 1))" --series 1 --policy block --json \
            >"$RUN/fan.json" 2>"$RUN/fan.log" &
        PIDS+=($!)
        for k in $(seq 0 $((n - 1))); do
            rank "rank$k" "tcp://127.0.0.1:$((p + 1 + k))" scan
        done
        # The start goes only to ranks whose consumer is connected.
        wait_lines "$RUN/fan.log" "$n" "consumer connected"
    fi
    "${TIME[@]}" -o "$RUN/send.time" "$BIN" "${SEND[@]}" --bind "tcp://127.0.0.1:$p" \
        >"$RUN/send.json" 2>"$RUN/send.log"
    wait "${PIDS[@]}"
    # Reaped: their ids may be another process's by the time the EXIT trap runs.
    PIDS=()
    python3 - "$RUN" "$n" <<'PY'
import glob, json, os, sys
run, n = sys.argv[1], int(sys.argv[2])
load = lambda p: json.load(open(p))
cpu = lambda name: (lambda t: t["user_s"] + t["sys_s"])(load(f"{run}/{name}.time"))
send = load(f"{run}/send.json")
ranks = [load(p) for p in sorted(glob.glob(f"{run}/rank*.json"))]
written = sum(r["frames_written"] for r in ranks)
wall = max(r["elapsed_s"] for r in ranks)
mb = sum(r["compressed_bytes"] for r in ranks) / 1e6
names = ["send"] + [f"rank{k}" for k in range(len(ranks))] + (["fan"] if n else [])
total_cpu = sum(cpu(x) for x in names)
out = {
    "ranks": n, "frames": send["sent"], "written": written,
    "dropped": send["dropped"] + sum(r["frames_dropped"] + r["frames_lost"] for r in ranks),
    "wall_s": round(wall, 3), "images_per_s": round(written / wall, 1),
    "mb_per_s": round(mb / wall, 1), "mb_per_image": round(mb / written, 3),
    "send_cpu_us_per_image": round(1e6 * cpu("send") / send["sent"], 1),
    "rank_cpu_us_per_image": [round(1e6 * cpu(f"rank{k}") / max(r["frames_written"], 1), 1)
                              for k, r in enumerate(ranks)],
    "cores": round(total_cpu / wall, 2),
}
if n:
    fan = load(f"{run}/fan.json")
    out["fan_cpu_us_per_image"] = round(1e6 * cpu("fan") / fan["images_in"], 1)
    out["fan_series_cpu_us_per_image"] = round(1e6 * fan["cpu_s"] / fan["images_in"], 1)
    out["fan_dropped"] = sum(r["dropped"] for r in fan["ranks"])
print(json.dumps(out))
PY
    rm -rf "$RUN/data"
}

for n in 0 1 2 3; do
    run "$n" | tee -a "$OUT/results.jsonl"
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'N':>6} {'img/s':>8} {'MB/s':>8} {'fan us/img':>11} {'rank us/img':>22} {'send us/img':>12} {'cores':>6}")
for r in rows:
    n = "direct" if r["ranks"] == 0 else r["ranks"]
    ranks = ", ".join(f"{c:.0f}" for c in r["rank_cpu_us_per_image"])
    fan = f"{r['fan_cpu_us_per_image']:.1f}" if r["ranks"] else "-"
    print(f"{n:>6} {r['images_per_s']:>8.1f} {r['mb_per_s']:>8.1f} {fan:>11} {ranks:>22} "
          f"{r['send_cpu_us_per_image']:>12.0f} {r['cores']:>6.2f}")
PY
