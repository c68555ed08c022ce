#!/usr/bin/env bash
# Screenshot of TensorBoard's scalars page for docs/tracking.md, from a real run: trains the demo with
# logging.report_to=tensorboard (held-out loss every 10 steps), serves the run with TensorBoard on
# 127.0.0.1 and photographs the page with headless Chromium (Debian: apt-get install chromium).
# Not part of CI. Usage: scripts/screenshot_tensorboard.sh [OUT.png]   (default docs/images/tensorboard_scalars.png)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/images/tensorboard_scalars.png}
BIN=${SFTGO_BUILD_DIR:-build}/bin/sftgo-train
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
[ -n "$CHROMIUM" ] || { echo "screenshot_tensorboard.sh: needs chromium (apt-get install chromium)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "screenshot_tensorboard.sh: build $BIN first (scripts/setup.sh --target sftgo-train)" >&2; exit 1; }
WORK=$(mktemp -d)
TB_PID=""
cleanup() { [ -n "$TB_PID" ] && kill "$TB_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
RUN=$WORK/demo
"$BIN" --config configs/demo_tiny.yaml --set run.output_dir="$RUN" --set run.name=demo --set train.save_final=false \
  --set data.eval_path=data/demo/demo_sft.jsonl --set train.eval_every=10 --set logging.report_to=tensorboard
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/tensorboard --logdir "$RUN/tensorboard" --host 127.0.0.1 --port "$PORT" > "$WORK/tensorboard.log" 2>&1 &
TB_PID=$!
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$PORT/data/runs" | grep -q '\[' && break
  sleep 0.5
done
# The scalars dashboard draws its charts in JavaScript after the page loads: give it virtual time.
"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1100 \
  --virtual-time-budget=20000 --screenshot="$WORK/shot.png" "http://127.0.0.1:$PORT/?darkMode=false#scalars&tagFilter=loss" \
  > "$WORK/chromium.log" 2>&1 || { cat "$WORK/chromium.log" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
cp "$WORK/shot.png" "$OUT"
echo "wrote $OUT"
