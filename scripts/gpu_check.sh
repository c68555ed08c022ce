#!/usr/bin/env bash
# GPU check kit: one call on a machine with one NVIDIA GPU validates sftgo's GPU paths and measures
# them side by side with what a user would pick instead (PyTorch, Liger-Kernel, cut-cross-entropy,
# a transformers training loop). Built for a machine with no network and no compiler: the binaries
# come from a bundle (scripts/gpu_bundle.sh on a build machine), Python needs torch and transformers.
# On a machine without a GPU every check that can runs on the CPU and the CUDA ones say
# "skipped (no GPU)".
#
# Usage: scripts/gpu_check.sh [--out DIR] [--quick] [--budget SECONDS] [--plan]
#   --out DIR     results (default gpu_check_out): it ends holding summary.md, logs.tar.gz and
#                 results.json, nothing else (work files live in a temporary folder, removed at exit)
#   --quick       without a GPU: leave out the grouping (LLMLingua-2 export, Rho-1) and score legs
#   --budget S    wall-clock budget (default 450 s); a check whose slot no longer fits is
#                 "skipped (time budget)"
#   --plan        print the checks, their order and time slots (and the total), run nothing
#   --slot-scale N  multiply every slot and the budget by N (default 1 with a GPU; 4 without one,
#                 where the CPU legs run on whatever cores the machine has)
# Binaries: $SFTGO_BUNDLE (default build/gpu_bundle) when it holds bin/sftgo-train and the build
# directory ($SFTGO_BUILD_DIR, default build) does not, else the build directory. Python:
# $SFTGO_PYTHON, else .venv/bin/python, else python3. Exit 0 when no check FAILed, 1 otherwise,
# 2 for a bad command line.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# ---- the plan: every check, in the order it runs, with its time slot in seconds on one H100 ------------
# The budget logic reads the same table: a check starts only when its slot fits in what is left, and
# every command inside it is killed at the slot's end. Most wanted numbers first.
PLAN_TABLE='
env            5  environment: GPU, driver, clocks, torch/CUDA/NCCL versions, sftgo-train --version
loss_cuda     35  CUDA loss kernels (fp32, bf16, V = 128256) against the fp64 CPU oracle (test_loss)
nccl          10  NCCL collectives on a one-rank group (test_dist NcclSmoke)
sftgo_3b      85  SFT-GO at the Llama-3.2-3B shape, bf16, seq 4096, checkpointing, TF-IDF: loss.scope step and microbatch
lora_8b       40  LoRA at the Llama-3.1-8B shape, one GPU: peak memory against docs/lora.md, tokens/s
loss_sftgo    25  sftgo fused loss fwd+bwd at 8192 x 3072 x 128256 bf16 (bench_loss)
loss_peers    45  the same loss: eager PyTorch CE, Liger fused linear CE, cut-cross-entropy, bf16 GEMM probe
train_peer    45  one 3B-shaped training job in a transformers loop (Liger loss where it imports)
score         15  sftgo-train score against transformers, fp32 and bf16
trainer       60  3-step jobs, no warm-up: plain, fp32-master, ZeRO-1 and ZeRO-3 (+offload) updaters, CUDA vs CPU
resume        20  save after step 2, resume to step 4: losses equal the uninterrupted run (deterministic)
grouping      30  LLMLingua-2 masks and Rho-1 reference losses, GPU against CPU, separate caches
sanitizer     30  compute-sanitizer memcheck and racecheck on the loss kernels
finish         5  summary.md, results.json, logs.tar.gz
'
plan_rows() { awk 'NF >= 3 && $1 !~ /^#/ {print}' <<< "$PLAN_TABLE"; }
slot_of() { plan_rows | awk -v id="$1" '$1 == id {print $2}'; }
plan_total() { plan_rows | awk '{s += $2} END {print s}'; }

OUT=$ROOT/gpu_check_out
QUICK=0
BUDGET=450
PLAN=0
SCALE=""
while (($#)); do
  case $1 in
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; OUT=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --budget)
      [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget needs whole seconds, got '${2:-}'" >&2; exit 2; }
      BUDGET=$2; shift 2 ;;
    --plan) PLAN=1; shift ;;
    --slot-scale)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check.sh: --slot-scale needs a whole number >= 1, got '${2:-}'" >&2; exit 2; }
      SCALE=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ((PLAN)); then
  echo "GPU check plan (slots in seconds on one H100; a check starts only if its slot fits the budget):"
  printf '%3s  %-12s %6s %6s  %s\n' "#" check slot "ends" what
  n=0 t=0
  while read -r id slot what; do
    n=$((n + 1)) t=$((t + slot))
    printf '%3d  %-12s %6d %6d  %s\n' "$n" "$id" "$slot" "$t" "$what"
  done < <(plan_rows)
  echo "total: $(plan_total) s (budget $BUDGET s)"
  (($(plan_total) <= BUDGET))
  exit
fi

# ---- output folder and scratch --------------------------------------------------------------------------
KIT_FILES=(summary.md results.json logs.tar.gz)
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
for f in "$OUT"/* "$OUT"/.[!.]*; do
  [ -e "$f" ] || continue
  case " ${KIT_FILES[*]} " in *" $(basename "$f") "*) rm -f "$f" ;; *)
    echo "gpu_check.sh: --out $OUT holds $(basename "$f"), which is not the kit's; give a new or empty folder" >&2
    exit 2 ;;
  esac
done
W=$(mktemp -d "${TMPDIR:-/tmp}/sftgo_gpu_check.XXXXXX") || exit 1
SAMPLER=""
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2> /dev/null
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
LOGS=$W/logs
mkdir -p "$LOGS/metrics"
# Compiled-kernel caches of torch and Triton go to scratch too: the call leaves the machine as it found it.
export TORCHINDUCTOR_CACHE_DIR=$W/torchinductor TRITON_CACHE_DIR=$W/triton
ROWS=$W/rows.tsv
: > "$ROWS"
START=$(date +%s)

PY=${SFTGO_PYTHON:-}
[ -z "$PY" ] && [ -x "$ROOT/.venv/bin/python" ] && PY=$ROOT/.venv/bin/python
[ -z "$PY" ] && PY=$(command -v python3)
PY=$(command -v "$PY") && [[ $PY = /* ]] || PY=$PWD/$PY
HELP="$PY $ROOT/scripts/gpu_check_helpers.py"
BUILD=${SFTGO_BUILD_DIR:-$ROOT/build}
[[ $BUILD = /* ]] || BUILD=$PWD/$BUILD
BUNDLE=${SFTGO_BUNDLE:-$ROOT/build/gpu_bundle}
[[ $BUNDLE = /* ]] || BUNDLE=$PWD/$BUNDLE
if [ -x "$BUNDLE/bin/sftgo-train" ] && { [ -n "${SFTGO_BUNDLE:-}" ] || [ ! -x "$BUILD/bin/sftgo-train" ]; }; then
  # The bundle's bin/ are wrappers that give bundle/lib (libstdc++, ...) and the torch wheel's lib/ to
  # sftgo's binaries alone; nothing here exports them, so python and compute-sanitizer keep their own.
  BIN=$BUNDLE/bin
  SFTGO_TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export SFTGO_TORCH_LIB SFTGO_PYTHON=$PY
  FROM="bundle $BUNDLE"
else
  BIN=$BUILD/bin
  FROM="build $BUILD"
fi
TOK=$ROOT/data/demo/tokenizer
[ -f "$BUNDLE/llama3/tokenizer.json" ] && TOK3=$BUNDLE/llama3 || TOK3=$ROOT/../shared/data/llama3
[ -f "$TOK3/tokenizer.json" ] || TOK3=$TOK
# Liger-Kernel and cut-cross-entropy: pure-Python wheels carried in the bundle, unpacked into scratch.
PEERS=$W/peers
mkdir -p "$PEERS"
for whl in "$BUNDLE"/wheels/*.whl "${SFTGO_PEER_WHEELS:-/nonexistent}"/*.whl; do
  [ -f "$whl" ] && "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$PEERS"
done
PEER_PY=(env "PYTHONPATH=$PEERS${PYTHONPATH:+:$PYTHONPATH}" "$PY")

GPU=0
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1 &&
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
  GPU=1
fi
NOGPU="skipped (no GPU)"
[ -n "$SCALE" ] || SCALE=$((GPU ? 1 : 4))
BUDGET=$((BUDGET * SCALE))

# record NAME RESULT VALUE BOUND NOTE: one row of summary.md (tab-separated, as the helper's add_row).
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${3//$'\t'/ }" "$4" "${5:-}" >> "$ROWS"
  printf '[gpu_check] %-44s %-22s %s %s\n' "$1" "$2" "$3" "${5:+($5)}" >&2
}
elapsed() { echo $(($(date +%s) - START)); }
SLOT_END=0
# begin ID: true when check ID's slot fits in what is left of the budget (else records a skip); sets
# the deadline every command of the check is held to.
begin() {
  local slot
  slot=$(($(slot_of "$1") * SCALE))
  if (($(elapsed) + slot > BUDGET)); then
    record "$1" "skipped (time budget)" "-" "slot $slot s" "$(elapsed) s used of $BUDGET s"
    return 1
  fi
  SLOT_END=$(($(date +%s) + slot))
  echo "[gpu_check] $1: slot $slot s, $(elapsed) s used" >&2
}
# run_log NAME CMD...: runs CMD until the slot's end; output in logs/NAME.log; returns its status
# (124 when the slot ran out).
run_log() {
  local name=$1 limit
  shift
  limit=$((SLOT_END - $(date +%s)))
  ((limit < 3)) && limit=3
  echo "+ $* (limit ${limit} s)" > "$LOGS/$name.log"
  timeout --kill-after=10 "$limit" "$@" >> "$LOGS/$name.log" 2>&1
}
jget() { "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); v = eval(sys.argv[2], {}, {"d": d}); print(v)' "$1" "$2" 2> /dev/null; }
le() { "$PY" -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$1" "$2" 2> /dev/null; }
smi_line() {
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,temperature.gpu,persistence_mode \
    --format=csv,noheader 2> /dev/null | head -1
}
exit_text() { case $1 in 0) echo "exit 0" ;; 124 | 137) echo "killed at the slot's end (exit $1)" ;; *) echo "exit $1" ;; esac; }

# train NAME DEVICE ARGS...: sftgo-train in scratch; its metrics.jsonl is kept in logs/metrics/NAME.jsonl
# and read whatever the exit code (a run killed after 2 of 3 steps still reports 2 steps). Sets RC.
train() {
  local name=$1 dev=$2
  shift 2
  rm -rf "$W/runs/$name"
  run_log "train_$name" "$BIN/sftgo-train" "$@" --set run.output_dir="$W/runs/$name" --set model.device="$dev" \
    "${NO_FINAL_SAVE[@]}"
  RC=$?
  echo "$RC" > "$W/runs/$name.rc"  # for a run in the background
  cp "$W/runs/$name/metrics.jsonl" "$LOGS/metrics/$name.jsonl" 2> /dev/null
  return $RC
}
metrics_of() { echo "$W/runs/$1/metrics.jsonl"; }
rc_of() { cat "$W/runs/$1.rc" 2> /dev/null || echo "?"; }

# ---- env ----------------------------------------------------------------------------------------------------
check_env() {
  begin env || return
  ENV_JSON=$($HELP env 2> "$LOGS/env_python.log" || echo '{}')
  echo "$ENV_JSON" > "$W/env.json"
  ((GPU)) && smi_line > "$W/smi.txt"
  {
    echo "binaries: $FROM"
    uname -a
    ldd --version 2>&1 | head -1
    ((GPU)) && nvidia-smi
    [ -f "$BUNDLE/MANIFEST.txt" ] && [ "$BIN" = "$BUNDLE/bin" ] && cat "$BUNDLE/MANIFEST.txt"
    echo "peer wheels unpacked: $(ls "$PEERS" 2> /dev/null | tr '\n' ' ')"
  } > "$LOGS/env.log" 2>&1
  # train.save_final=false: measuring runs skip the final checkpoint (a 3B one is ~45 GB).
  NO_FINAL_SAVE=(--set train.save_final=false)
  local save_note=""
  if ! "$BIN/sftgo-train" config --set train.save_final=false > /dev/null 2>> "$LOGS/env.log"; then
    NO_FINAL_SAVE=()
    save_note="this binary has no train.save_final: runs write their final checkpoint"
  fi
  if ! "$BIN/sftgo-train" --version > "$LOGS/version.log" 2>&1; then
    record environment FAIL "sftgo-train --version failed" "runs" "logs/version.log (binaries: $FROM)"
    return
  fi
  local built torch_nccl value
  built=$(sed -n 's/^NCCL: //p' "$LOGS/version.log")
  torch_nccl=$(jget "$ENV_JSON" 'd.get("nccl")')
  value="torch $(jget "$ENV_JSON" 'd.get("torch")'), CUDA $(jget "$ENV_JSON" 'd.get("cuda")'), NCCL $torch_nccl, cuDNN $(jget "$ENV_JSON" 'd.get("cudnn")'); sftgo NCCL ${built:-?}; $(sed -n 's/^sftgo-train //p' "$LOGS/version.log" | head -1)"
  if ((GPU)); then
    if [ "$built" = "$torch_nccl" ]; then st=pass; else st=FAIL; fi
    record environment "$st" "$(smi_line | cut -d, -f1,2); $value" "sftgo NCCL = torch NCCL" "$save_note"
  else
    record environment pass "no GPU; $value" "sftgo-train --version runs" "$save_note"
  fi
}

# ---- loss_cuda ----------------------------------------------------------------------------------------------
check_loss_cuda() {
  if ((!GPU)); then
    record "loss CUDA fp32 vs fp64 CPU" "$NOGPU" "-" "1e-4 rel" ""
    record "loss CUDA bf16 vs fp64 CPU" "$NOGPU" "-" "3e-2 rel" ""
    return
  fi
  begin loss_cuda || return
  if run_log loss_cuda "$BIN/test_loss" --gtest_filter='LossCuda.*'; then rc=pass; else rc=FAIL; fi
  local p f32 b16 st
  p=$($HELP parity "$LOGS/loss_cuda.log")
  f32=$(jget "$p" 'd.get("fp32", "n/a")')
  b16=$(jget "$p" 'd.get("bf16", "n/a")')
  # Bounds as in tests/loss/test_loss_cuda.cpp (the reasons are written there).
  st=$rc; le "$f32" 1e-4 || st=FAIL
  record "loss CUDA fp32 vs fp64 CPU" "$st" "max rel $f32" "1e-4 rel" "V=128256 included; logs/loss_cuda.log"
  st=$rc; le "$b16" 3e-2 || st=FAIL
  record "loss CUDA bf16 vs fp64 CPU" "$st" "max rel $b16" "3e-2 rel" "V=128256"
}

# ---- nccl ---------------------------------------------------------------------------------------------------
check_nccl() {
  if ((!GPU)); then
    record "NCCL world-1 collectives" "$NOGPU" "-" "exact" "all-reduce, reduce-scatter, all-gather, barrier"
    return
  fi
  begin nccl || return
  if run_log nccl_smoke "$BIN/test_dist" --gtest_filter='NcclSmoke.*' && grep -q '\[  PASSED  \] 1 test' "$LOGS/nccl_smoke.log"; then
    record "NCCL world-1 collectives" pass "$(grep -o 'nccl smoke: .*' "$LOGS/nccl_smoke.log" | head -1)" "exact" ""
  else
    record "NCCL world-1 collectives" FAIL "see log" "exact" "logs/nccl_smoke.log"
  fi
}

# ---- sftgo_3b -----------------------------------------------------------------------------------------------
# The 3B job: random weights (model.path empty), the Llama-3 tokenizer (128256 ids), 32 chat examples
# of ~4300 tokens truncated at 4096, micro-batch 2, 4 micro-batches per step, 3 steps.
BIG_ARGS=()
check_sftgo_3b() {
  local name3="SFT-GO llama3.2-3b shape, seq 4096"
  if ((!GPU)); then
    record "$name3, scope step" "$NOGPU" "-" "3 steps run; memory fits" ""
    record "$name3, scope microbatch" "$NOGPU" "-" "3 steps run; memory fits" ""
    record "loss.scope step / microbatch step time" "$NOGPU" "-" "<= 1.4" ""
    return
  fi
  begin sftgo_3b || return
  $HELP long-data "$W/long.jsonl" 32 4300 > /dev/null
  BIG_ARGS=(--set model.path= --set tokenizer.path="$TOK3" --set data.path="$W/long.jsonl" --set data.format=chat
    --set data.cache_dir="$W/cache_big" --set train.log_every=1 --set train.save_every=0 --set data.packing=false
    --set optim.warmup_steps=0)
  # Memory, SM clock and power once a second while the 3B jobs run: the clocks the numbers were taken at.
  (while sleep 1; do nvidia-smi --query-gpu=memory.used,clocks.sm,power.draw --format=csv,noheader,nounits; done) > "$LOGS/gpu_samples.log" 2>&1 &
  SAMPLER=$!
  local scope s_step s_micro
  for scope in step microbatch; do
    # 45 s for the step leg, 40 s for the microbatch leg (the slot's 85 s).
    [ "$scope" = step ] && SLOT_END=$(($(date +%s) + 45 * SCALE)) || SLOT_END=$(($(date +%s) + 40 * SCALE))
    train "3b_$scope" cuda --config "$ROOT/configs/lima_llama3b_tfidf.yaml" "${BIG_ARGS[@]}" --set loss.scope="$scope" \
      --set train.max_steps=3 --set train.global_batch_size=8 --set train.micro_batch_size=2
    local rc=$RC m n
    m=$($HELP metrics "$(metrics_of "3b_$scope")")
    n=$(jget "$m" 'd["n"]')
    if ((rc == 0)) && [ "$n" = 3 ]; then st=pass; else st=FAIL; fi
    record "$name3, scope $scope" "$st" "$(jget "$m" 'd["summary"]')" "3 steps run; memory fits" \
      "$(exit_text $rc); medians of steps 2-3; logs/train_3b_$scope.log"
    [ "$scope" = step ] && s_step=$(jget "$m" 'd["step_s"]') || s_micro=$(jget "$m" 'd["step_s"]')
  done
  kill "$SAMPLER" 2> /dev/null
  SAMPLER=""
  local smi_peak r clocks
  smi_peak=$(cut -d, -f1 "$LOGS/gpu_samples.log" 2> /dev/null | sort -n | tail -1)
  clocks=$(cut -d, -f2 "$LOGS/gpu_samples.log" 2> /dev/null | sort -n | awk '{v[NR] = $1} END {if (NR) printf "SM clock median %d MHz (min %d, max %d)", v[int((NR + 1) / 2)], v[1], v[NR]}')
  if [ -n "${s_step:-}" ] && [ -n "${s_micro:-}" ] && [ "$s_step" != None ] && [ "$s_micro" != None ]; then
    r=$("$PY" -c "print(f'{$s_step / $s_micro:.3f}')")
    # With checkpointing a step is ~4 forward-equivalents (forward, recompute, backward = 2); scope step
    # adds one no-grad forward: ~1.25 expected, 1.4 leaves room for the group statistics' sync.
    le "$r" 1.4 && st=pass || st=FAIL
    record "loss.scope step / microbatch step time" "$st" "$r ($s_step s / $s_micro s)" "<= 1.4 (1.25 expected)" \
      "nvidia-smi peak ${smi_peak:-?} MiB; ${clocks:-no clock samples} over both runs"
  else
    record "loss.scope step / microbatch step time" FAIL "a run gave no step time" "<= 1.4" "logs/train_3b_*.log"
  fi
}

# ---- lora_8b ------------------------------------------------------------------------------------------------
check_lora_8b() {
  local name8="LoRA llama3.1-8b shape, seq 4096, one GPU"
  if ((!GPU)); then
    record "$name8" "$NOGPU" "-" "peak reserved <= 21.5 GiB (docs/lora.md)" ""
    return
  fi
  begin lora_8b || return
  [ -f "$W/long.jsonl" ] || $HELP long-data "$W/long.jsonl" 32 4300 > /dev/null
  train lora_8b cuda --config "$ROOT/configs/lima_llama8b_tfidf_lora.yaml" --set model.path= --set tokenizer.path="$TOK3" \
    --set data.path="$W/long.jsonl" --set data.format=chat --set data.cache_dir="$W/cache_big" --set train.log_every=1 \
    --set train.save_every=0 --set train.max_steps=3 --set train.global_batch_size=4 --set optim.warmup_steps=0
  local rc=$RC m n gib
  m=$($HELP metrics "$(metrics_of lora_8b)")
  n=$(jget "$m" 'd["n"]')
  gib=$(jget "$m" '"%.2f" % (d["peak_reserved_gb"] * 1e9 / 2**30) if d.get("peak_reserved_gb") else "n/a"')
  st=FAIL
  ((rc == 0)) && [ "$n" = 3 ] && le "$gib" 21.5 && st=pass
  record "$name8" "$st" "$(jget "$m" 'd["summary"]'); peak reserved $gib GiB" "peak reserved <= 21.5 GiB (docs/lora.md)" \
    "$(exit_text $rc); micro-batch 1, r 16 all-linear, dropout 0.05; MFU counts 4N frozen + 6N trainable"
}

# ---- loss_sftgo, loss_peers ---------------------------------------------------------------------------------
LOSS_SHAPE="8192x3072x128256 bf16"
check_loss_sftgo() {
  begin loss_sftgo || return
  if ((GPU)); then
    run_log loss_sftgo "$BIN/bench_loss" --device cuda --dtype bf16 --iters 3 --variants unfused,ce-auto,sftgo-auto \
      --sizes '8192,3072,128256'
  else
    LOSS_SHAPE="64x32x1000 fp32 CPU smoke"
    run_log loss_sftgo "$BIN/bench_loss" --device cpu --iters 1 --threads 1 --variants unfused,ce-auto,sftgo-auto \
      --sizes '64,32,1000'
  fi
}
check_loss_peers() {
  begin loss_peers || return
  local args=(--json "$W/loss_peers.json")
  ((GPU)) || args+=(--smoke)
  run_log loss_peers "${PEER_PY[@]}" "$ROOT/bench/gpu/loss_peers.py" "${args[@]}"
  $HELP loss-table "$LOGS/loss_sftgo.log" "$W/loss_peers.json" "$ROWS" "$LOSS_SHAPE" > /dev/null
  cp "$W/loss_peers.json" "$LOGS/" 2> /dev/null
}

# ---- train_peer ---------------------------------------------------------------------------------------------
check_train_peer() {
  begin train_peer || return
  local args=(--json "$W/train_peer.json")
  ((GPU)) && args+=(--preset llama3.2-3b --seq 4096 --micro 2 --accum 4 --steps 3) || args+=(--smoke)
  run_log train_peer "${PEER_PY[@]}" "$ROOT/bench/gpu/train_peer.py" "${args[@]}"
  local rc=$?
  cp "$W/train_peer.json" "$LOGS/" 2> /dev/null
  if ((GPU)); then
    $HELP train-ratio "$(metrics_of 3b_microbatch)" "$W/train_peer.json" "$ROWS" \
      "3B training step: sftgo (scope microbatch) / transformers loop" > /dev/null
  elif ((rc == 0)); then
    record "transformers loop (CPU smoke)" pass "$(jget "$(cat "$W/train_peer.json")" '"%.0f tokens/s, loss %.3f -> %.3f" % (d["tokens_per_s"], d["first_loss"], d["last_loss"])')" \
      "runs" "tiny Llama; the plumbing of train_peer.py"
    record "3B training step: sftgo (scope microbatch) / transformers loop" "$NOGPU" "-" "ratios reported" ""
  else
    record "transformers loop (CPU smoke)" FAIL "$(exit_text $rc)" "runs" "logs/train_peer.log"
  fi
}

# ---- score --------------------------------------------------------------------------------------------------
check_score() {
  if ((QUICK && !GPU)); then return; fi
  begin score || return
  if ! $HELP make-llama "$W/llama" > /dev/null 2> "$LOGS/make_llama.log"; then
    record "score vs transformers" FAIL "tiny Llama not made" "-" "logs/make_llama.log"
    return
  fi
  local dev dt name bound ours c d
  for dev in cpu cuda; do
    for dt in float32 bfloat16; do
      name="score $dev $dt vs transformers"
      # fp32: the same op order up to matmul blocking (1e-4 as tests/python/test_cli_train.py); bf16:
      # both sides round activations to bf16 at different points, log-probs of a 512-token vocabulary
      # move by a few 1e-2.
      bound=$([ "$dt" = float32 ] && echo 1e-4 || echo 0.1)
      if [ "$dev" = cuda ] && ((!GPU)); then record "$name" "$NOGPU" "-" "$bound abs" ""; continue; fi
      [ "$dev" = cpu ] && [ "$dt" = bfloat16 ] && continue  # the GPU comparison is the point; CPU fp32 proves the plumbing
      ours=$W/score_${dev}_$dt.jsonl
      if run_log "score_${dev}_$dt" "$BIN/sftgo-train" score --model "$W/llama/model" --data "$W/llama/ids.jsonl" \
        --out "$ours" --device "$dev" --dtype "$dt"; then
        c=$($HELP score-compare "$W/llama/model" "$W/llama/ids.jsonl" "$ours" "$dev" "$dt" 2>> "$LOGS/score_${dev}_$dt.log")
        d=$(jget "$c" 'd["text"]')
        if [ -n "$d" ] && le "$d" "$bound"; then st=pass; else st=FAIL; fi
        record "$name" "$st" "max abs log-prob diff ${d:-? $c}" "$bound abs" "GQA 4/2, llama3 rope scaling, 80 tokens"
      else
        record "$name" FAIL "score failed" "$bound abs" "logs/score_${dev}_$dt.log"
      fi
    done
  done
}

# ---- trainer ------------------------------------------------------------------------------------------------
# The demo job shrunk to a fraction of a second per step: the demo tokenizer's 1408 ids, hidden 64,
# 2 layers; 2 micro-batches of 8 per step; no warm-up and a constant lr, so every step after the
# first trains with lr 3e-3 and step k's loss depends on k-1 updates.
small() {  # small CACHE_DIR [UPDATER]: sets SMALL, the job's arguments
  SMALL=(--config "$ROOT/configs/demo_tiny.yaml" --set tokenizer.path="$TOK" --set model.vocab_size=1408
    --set model.hidden_size=64 --set model.intermediate_size=128 --set model.num_layers=2 --set data.cache_dir="$1"
    --set train.log_every=1 --set train.num_threads=4 --set optim.warmup_steps=0 --set optim.schedule=constant)
  case ${2:-plain} in
    plain) ;;
    fp32_master) SMALL+=(--set model.dtype=bfloat16 --set train.precision=bf16) ;;
    zero1) SMALL+=(--set dist.zero1=true) ;;
    # ZeRO-3 at world 1 runs the code path of any world size: every layer freed after its forward and
    # gathered (a local cast of the master shard; the broadcasts only a multi-GPU machine exercises)
    # around its forward and its recomputation; offload adds the host-memory state and the copies.
    zero3) SMALL+=(--set dist.zero=3) ;;
    zero3_offload) SMALL+=(--set dist.zero=3 --set dist.offload_optimizer=cpu) ;;
  esac
}
# Bounds (relative, per step, loss / grad norm):
#  fp32 CUDA vs CPU 1e-4 / 1e-3: the same fp32 math with other summation orders (cuBLAS blocking,
#    atomics in attention backward); ~1e-6 per op, grown by 3 AdamW steps, whose update is about
#    lr * sign(g) where |g| is tiny: a grad norm sums such entries and moves most.
#  bf16 (fp32 masters) against bf16 or fp32: 1e-2 / 5e-2: bf16 keeps 8 mantissa bits (4e-3 per
#    rounding); weights, activations and gradients are rounded at every layer, on the GPU at other
#    points than on the CPU (fused kernels, tensor-core accumulation order). On the CPU, bf16 against
#    fp32 measured 1.2e-4 / 2.7e-3 over these 3 steps (2026-12-07): the bound leaves ~20x for the GPU's
#    other rounding points, and a bf16 path that lost the fp32 masters (updates of 3e-3 x 1e-2 vanish
#    in bf16 weights) moves the loss by more.
TOL_FP32="1e-4 1e-3"
TOL_BF16="1e-2 5e-2"
check_trainer() {
  begin trainer || return
  local leg cmp
  for leg in plain fp32_master zero1 zero3 zero3_offload; do
    # The CPU leg runs beside the CUDA one (16 cores; the tiny CUDA job is launch-bound).
    small "$W/cache_cpu" $leg
    train "${leg}_cpu" cpu "${SMALL[@]}" --set train.max_steps=3 &
    local cpu_pid=$!
    if ((GPU)); then
      small "$W/cache_cuda" $leg
      train "${leg}_cuda" cuda "${SMALL[@]}" --set train.max_steps=3
    fi
    wait "$cpu_pid"
  done
  for leg in plain fp32_master zero1 zero3 zero3_offload; do
    local tol=$TOL_FP32 what="fp32"
    [ $leg = fp32_master ] && tol=$TOL_BF16 what="bf16"
    if ((GPU)); then
      cmp=$($HELP compare-steps "$(metrics_of ${leg}_cuda)" "$(metrics_of ${leg}_cpu)" $tol)
      [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
      record "train $leg: CUDA $what vs CPU $what" "$st" "$(jget "$cmp" 'd["text"]')" "loss ${tol% *} / grad norm ${tol#* } rel, >= 3 steps" \
        "exit CUDA $(rc_of ${leg}_cuda), CPU $(rc_of ${leg}_cpu); logs/metrics/${leg}_cuda.jsonl"
    else
      local n
      n=$($HELP metrics "$(metrics_of ${leg}_cpu)")
      if [ "$(jget "$n" 'd["n"]')" = 3 ] && [ "$(rc_of ${leg}_cpu)" = 0 ]; then
        record "train $leg: CUDA $what vs CPU $what" "$NOGPU" "CPU losses $(jget "$n" '", ".join("%.5f" % x for x in d["losses"])')" \
          "loss ${tol% *} / grad norm ${tol#* } rel, >= 3 steps" ""
      else
        record "train $leg (CPU leg)" FAIL "$(jget "$n" 'd["summary"]'), $(exit_text "$(rc_of ${leg}_cpu)")" "3 steps, exit 0" \
          "logs/train_${leg}_cpu.log"
      fi
    fi
  done
  # Updaters against each other where the math is the same: ZeRO-1 at world 1 holds the same fp32
  # AdamW state in one flat buffer (only the gradient norm's summation order differs: 1e-5); bf16
  # with fp32 masters against fp32 (the bf16 bound above).
  local dev=cpu
  ((GPU)) && dev=cuda
  cmp=$($HELP compare-steps "$(metrics_of zero1_$dev)" "$(metrics_of plain_$dev)" 1e-5 1e-5)
  [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
  record "train ZeRO-1 (world 1) vs plain updater, $dev" "$st" "$(jget "$cmp" 'd["text"]')" "loss / grad norm 1e-5 rel" ""
  # ZeRO-3 against ZeRO-1 on the same device: the same fp32 master shard and update, the weights gathered
  # as master.to(dtype) and every layer recomputed (the same operations again): equal on the CPU, 1e-5
  # allowed for a GPU kernel that picks another algorithm for the recomputation. Offload runs the update
  # on the host (on the CPU leg nothing moves): on a GPU the host's fp32 AdamW against the device's
  # (~1e-7 per op, grown by 3 steps as the fp32 bound above says).
  cmp=$($HELP compare-steps "$(metrics_of zero3_$dev)" "$(metrics_of zero1_$dev)" 1e-5 1e-5)
  [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
  record "train ZeRO-3 (world 1) vs ZeRO-1, $dev" "$st" "$(jget "$cmp" 'd["text"]')" "loss / grad norm 1e-5 rel" ""
  cmp=$($HELP compare-steps "$(metrics_of zero3_offload_$dev)" "$(metrics_of zero3_$dev)" $TOL_FP32)
  [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
  record "train ZeRO-3 offload vs on-device state, $dev" "$st" "$(jget "$cmp" 'd["text"]')" \
    "loss ${TOL_FP32% *} / grad norm ${TOL_FP32#* } rel" ""
  cmp=$($HELP compare-steps "$(metrics_of fp32_master_$dev)" "$(metrics_of plain_$dev)" $TOL_BF16)
  [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
  record "train bf16 fp32-master vs fp32, $dev" "$st" "$(jget "$cmp" 'd["text"]')" "loss ${TOL_BF16% *} / grad norm ${TOL_BF16#* } rel" ""
  if ((GPU)); then
    cmp=$($HELP compare-steps "$(metrics_of fp32_master_cuda)" "$(metrics_of plain_cpu)" $TOL_BF16)
    [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
    record "train bf16 fp32-master CUDA vs fp32 CPU" "$st" "$(jget "$cmp" 'd["text"]')" "loss ${TOL_BF16% *} / grad norm ${TOL_BF16#* } rel" ""
  fi
}

# ---- resume -------------------------------------------------------------------------------------------------
check_resume() {
  begin resume || return
  local dev=cpu det=() tol=0 cmp
  # CPU runs are bit-reproducible; on a GPU train.deterministic makes them so (docs/gpu.md).
  ((GPU)) && dev=cuda det=(--set train.deterministic=true)
  small "$W/cache_$dev"
  local base=("${SMALL[@]}" "${det[@]}") no_save=("${NO_FINAL_SAVE[@]}") ok=0
  # The first half saves at step 2 (its last step: with the final save it writes, kept on purpose).
  train resume_full "$dev" "${base[@]}" --set train.max_steps=4 && {
    NO_FINAL_SAVE=()
    train resume_part "$dev" "${base[@]}" --set train.max_steps=2 --set train.save_every=2
  } && NO_FINAL_SAVE=("${no_save[@]}") && train_resume_b "$dev" "${base[@]}" && ok=1
  NO_FINAL_SAVE=("${no_save[@]}")
  if ((ok)); then
    cmp=$($HELP resume-compare "$(metrics_of resume_full)" "$(metrics_of resume_part)" 2 "$tol")
    [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
    record "train save at step 2 + resume to 4 ($dev)" "$st" "$(jget "$cmp" 'd["text"]')" "exact (0)" \
      "$([ $dev = cuda ] && echo 'train.deterministic: true; ')lr 3e-3 from step 1"
  else
    record "train save at step 2 + resume to 4 ($dev)" FAIL "a run failed" "exact (0)" "logs/train_resume_*.log"
  fi
}
train_resume_b() {  # the second half: the same output dir, --resume auto
  local dev=$1
  shift
  run_log train_resume_b "$BIN/sftgo-train" "$@" --set run.output_dir="$W/runs/resume_part" \
    --set model.device="$dev" --set train.max_steps=4 --resume auto "${NO_FINAL_SAVE[@]}"
  local rc=$?
  cp "$W/runs/resume_part/metrics.jsonl" "$LOGS/metrics/resume_part.jsonl" 2> /dev/null
  return $rc
}

# ---- grouping -----------------------------------------------------------------------------------------------
# Each device leg has its own data.cache_dir (the cache key holds no device), and the CPU leg of
# LLMLingua-2 runs the classifier on the CPU (llmlingua2_device: cpu, not auto).
check_grouping() {
  if ((QUICK && !GPU)); then return; fi
  begin grouping || return
  local llm=$W/llm2 dev cmp
  if run_log llmlingua2_export bash -c "'$PY' '$ROOT/scripts/make_tiny_llmlingua2.py' '$W/tiny-xlm-roberta-large' &&
      '$PY' '$ROOT/scripts/export_llmlingua2.py' '$W/tiny-xlm-roberta-large' '$llm'"; then
    for dev in cpu cuda; do
      ((GPU)) || [ $dev = cpu ] || continue
      small "$W/cache_$dev"
      run_log "groups_llmlingua2_$dev" "$BIN/sftgo-train" groups "${SMALL[@]}" \
        --set grouping.function=llmlingua2 --set grouping.llmlingua2_model="$llm" --set grouping.llmlingua2_device=$dev \
        --jsonl "$W/llm2_$dev.jsonl"
    done
    # Scores are the classifier's probabilities in fp32 on both devices (LibTorch keeps TF32 off):
    # 1e-4 absolute; a mask entry may flip only where a score sits within that of the top-k threshold,
    # so at most 0.5% of the trained tokens.
    if ((GPU)); then
      cmp=$($HELP groups-compare "$W/llm2_cuda.jsonl" "$W/llm2_cpu.jsonl" 1e-4 0.005)
      [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
      record "LLMLingua-2 masks and scores, CUDA vs CPU" "$st" "$(jget "$cmp" 'd["text"]')" "scores 1e-4 abs; masks <= 0.5% differ" ""
    elif [ -s "$W/llm2_cpu.jsonl" ]; then
      record "LLMLingua-2 masks and scores, CUDA vs CPU" "$NOGPU" "CPU leg: $(wc -l < "$W/llm2_cpu.jsonl") examples grouped on the CPU" \
        "scores 1e-4 abs; masks <= 0.5% differ" ""
    else
      record "LLMLingua-2 groups (CPU leg)" FAIL "no --jsonl written" "runs" "logs/groups_llmlingua2_cpu.log"
    fi
  else
    record "LLMLingua-2 masks and scores, CUDA vs CPU" FAIL "export failed" "-" "logs/llmlingua2_export.log"
  fi
  # Rho-1: the reference is the resume check's step-2 checkpoint (same tokenizer and shape); each leg
  # scores the data with it on its own device into its own cache. fp32 log-probs: 1e-4 as the score check.
  local ref=$W/runs/resume_part/checkpoints/latest
  if [ ! -e "$ref" ]; then
    record "Rho-1 reference losses, CUDA vs CPU" "skipped (no reference checkpoint: resume did not run)" "-" "1e-4 abs" ""
    return
  fi
  for dev in cpu cuda; do
    ((GPU)) || [ $dev = cpu ] || continue
    small "$W/cache_rho1_$dev"
    train "rho1_$dev" $dev "${SMALL[@]}" --set grouping.function=rho1 --set loss.objective=rho1 \
      --set grouping.rho1_reference_model="$ref" --set train.max_steps=1
  done
  if ((GPU)); then
    cmp=$($HELP cache-compare "$W/cache_rho1_cuda" "$W/cache_rho1_cpu" rho1-ref 1e-4)
    [ "$(jget "$cmp" 'd["ok"]')" = True ] && st=pass || st=FAIL
    record "Rho-1 reference losses, CUDA vs CPU" "$st" "$(jget "$cmp" 'd["text"]')" "1e-4 abs" "the two legs' grouping caches"
  else
    cmp=$($HELP cache-compare "$W/cache_rho1_cpu" "$W/cache_rho1_cpu" rho1-ref 0)
    if [ "$(jget "$cmp" 'd["ok"]')" = True ]; then
      record "Rho-1 reference losses, CUDA vs CPU" "$NOGPU" "CPU leg: $(jget "$cmp" 'd["text"].split(":")[0]') scored and cached" "1e-4 abs" ""
    else
      record "Rho-1 reference losses (CPU leg)" FAIL "$(jget "$cmp" 'd["text"]')" "cache written" "logs/train_rho1_cpu.log"
    fi
  fi
}

# ---- sanitizer ----------------------------------------------------------------------------------------------
check_sanitizer() {
  local san tool errors rc
  san=$(command -v compute-sanitizer || { [ -x /usr/local/cuda/bin/compute-sanitizer ] && echo /usr/local/cuda/bin/compute-sanitizer; })
  if ((!GPU)); then
    for tool in memcheck racecheck; do record "compute-sanitizer $tool" "$NOGPU" "-" "0 errors" ""; done
    return
  fi
  if [ -z "$san" ]; then
    for tool in memcheck racecheck; do record "compute-sanitizer $tool" "skipped (no compute-sanitizer)" "-" "0 errors" ""; done
    return
  fi
  begin sanitizer || return
  local end=$SLOT_END
  for tool in memcheck racecheck; do
    [ $tool = memcheck ] && SLOT_END=$(($(date +%s) + (end - $(date +%s)) / 2)) || SLOT_END=$end
    # Only the project's row kernels are instrumented (cuBLAS is not ours and is slow under the tool).
    run_log "sanitizer_$tool" "$san" --tool "$tool" --error-exitcode 9 --kernel-name kns=row_ \
      "$BIN/test_loss" --gtest_filter='LossCuda.Fp32Parity:LossCuda.AllIgnoredAndNumericCheck'
    rc=$?
    errors=$(grep -oE 'ERROR SUMMARY: [0-9]+' "$LOGS/sanitizer_$tool.log" | tail -1 | grep -oE '[0-9]+$')
    if grep -q 'Device not supported' "$LOGS/sanitizer_$tool.log"; then
      record "compute-sanitizer $tool" "skipped (device not supported by the tool)" "-" "0 errors" "logs/sanitizer_$tool.log"
    elif ((rc == 0)) && [ "${errors:-0}" = 0 ]; then
      record "compute-sanitizer $tool" pass "${errors:-0} errors" "0 errors" "row kernels"
    else
      record "compute-sanitizer $tool" FAIL "${errors:-?} errors ($(exit_text $rc))" "0 errors" "logs/sanitizer_$tool.log"
    fi
  done
}

# ---- run, in the plan's order ---------------------------------------------------------------------------------
NO_FINAL_SAVE=()
while read -r id _; do
  [ "$id" = finish ] && continue
  "check_$id"
done < <(plan_rows)

# ---- finish: summary.md, results.json, logs.tar.gz (each under 16 MiB) ------------------------------------------
((GPU)) && smi_line >> "$W/smi.txt"
TITLE="GPU check: $(date -u +%Y-%m-%dT%H:%MZ), $(elapsed) s of $BUDGET s, binaries: $FROM"
$HELP summary "$ROWS" "$W/env.json" "$W/smi.txt" "$OUT/summary.md" "$OUT/results.json" "$TITLE" > /dev/null ||
  { echo "gpu_check.sh: summary failed" >&2; cp "$ROWS" "$OUT/summary.md"; }
# Logs over 2 MiB keep their first and last MiB (a sanitizer or a crash can write hundreds of MiB).
find "$LOGS" -type f -size +2M | while read -r f; do
  { head -c 1048576 "$f"; printf '\n[... cut by gpu_check.sh ...]\n'; tail -c 1048576 "$f"; } > "$f.cut" && mv "$f.cut" "$f"
done
cp "$OUT/summary.md" "$LOGS/"
tar -czf "$OUT/logs.tar.gz" -C "$W" logs
cat "$OUT/summary.md"
! grep -q '| FAIL |' "$OUT/summary.md"
