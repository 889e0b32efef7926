#!/bin/sh
# A soak of `detflow serve`: builds the release binary, then runs benches/soak.py (which
# makes or completes the venv target/tmp/ca-interop-venv and enters `unshare -n` itself).
#   benches/soak.sh                          # 30 minutes
#   benches/soak.sh --minutes 2 --json soak.json
set -e
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin detflow
exec python3 benches/soak.py "$@"
