#!/usr/bin/env bash
# Reproduces a results table: trains every config x seed, evaluates each final checkpoint with
# `sftgo-train eval` on the tasks given, and writes OUT/table.md and OUT/table.csv laid out like the
# SFT-GO paper's Tables 1-2 (one row per config, one column per task, mean +- std over seeds).
#
#   scripts/reproduce.sh --configs "configs/lima_llama3b_sft.yaml configs/lima_llama3b_tfidf.yaml" \
#       --seeds "1 2 3" \
#       --task arc_challenge=data/eval/arc_challenge_test.jsonl \
#       --task mmlu:5=data/eval/mmlu_test.jsonl,data/eval/mmlu_dev.jsonl \
#       --task truthfulqa_mc2/acc=data/eval/truthfulqa_mc.jsonl
#
# --task NAME[:SHOTS][/METRIC]=FILE[,FEWSHOT_FILE]  (repeatable; METRIC default: acc_norm when the
#        task reports it, else acc; values are shown in percent)
# --configs "A.yaml B.yaml"   --seeds "1 2 3" (run.seed)   --out DIR (default results)
# --set KEY=VALUE             passed to every training run (repeatable)
# --launch "mpirun -np 8"     prefix for the training command (multi-GPU configs)
# --device auto|cpu|cuda      for evaluation   --limit N   evaluate the first N documents only
# --no-setup                  skip scripts/setup.sh (build and venv already there)
# A run whose OUT/runs/<config>_seed<S>/DONE exists is not trained again, and an evaluation whose
# JSON exists is not repeated, so an interrupted reproduction continues where it stopped.
# *_rho1 configs use the final checkpoint of the *_sft run with the same prefix and seed as their
# reference model when this script trained it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SFTGO_BUILD_DIR:-build}
BIN="$BUILD_DIR/bin/sftgo-train"
CONFIGS=() SEEDS=(1) TASKS=() SETS=() OUT=results LAUNCH="" DEVICE=auto LIMIT=-1 SETUP=1

die() { echo "reproduce.sh: $*" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --configs) read -r -a CONFIGS <<<"${2:?}"; shift ;;
    --seeds) read -r -a SEEDS <<<"${2:?}"; shift ;;
    --task) TASKS+=("${2:?}"); shift ;;
    --set) SETS+=(--set "${2:?}"); shift ;;
    --out) OUT=${2:?}; shift ;;
    --launch) LAUNCH=${2:?}; shift ;;
    --device) DEVICE=${2:?}; shift ;;
    --limit) LIMIT=${2:?}; shift ;;
    --no-setup) SETUP=0 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
((${#CONFIGS[@]})) || die "--configs is required"
((${#TASKS[@]})) || die "at least one --task NAME=FILE is required"
for c in "${CONFIGS[@]}"; do [ -f "$c" ] || die "config not found: $c"; done
for s in "${SEEDS[@]}"; do [[ "$s" =~ ^[0-9]+$ ]] || die "seed '$s' is not a non-negative integer"; done
for t in "${TASKS[@]}"; do
  [[ "$t" == *=* ]] || die "--task '$t': expected NAME[:SHOTS][/METRIC]=FILE[,FEWSHOT_FILE]"
  files=${t#*=}
  for f in ${files//,/ }; do [ -f "$f" ] || die "--task '$t': file not found: $f"; done
done
if ((SETUP)); then scripts/setup.sh; fi
[ -x "$BIN" ] || die "$BIN not built (run scripts/setup.sh)"
PY=.venv/bin/python; [ -x "$PY" ] || PY=python3

# Newest finished checkpoint of a run directory (step_NNNNNNNN with its trainer state).
final_checkpoint() {
  local d
  d=$(find "$1/checkpoints" -maxdepth 1 -type d -name 'step_[0-9]*' 2>/dev/null | sort | while read -r c; do
    [ -f "$c/trainer_state.json" ] && echo "$c"; done | tail -n 1)
  [ -n "$d" ] || { echo "reproduce.sh: no finished checkpoint under $1/checkpoints" >&2; return 1; }
  echo "$d"
}

mkdir -p "$OUT/runs" "$OUT/evals"
for cfg in "${CONFIGS[@]}"; do
  name=$(basename "$cfg" .yaml)
  for seed in "${SEEDS[@]}"; do
    run="$OUT/runs/${name}_seed${seed}"
    if [ ! -f "$run/DONE" ]; then
      extra=()
      if [[ "$name" == *_rho1 ]] && [ -f "$OUT/runs/${name%_rho1}_sft_seed${seed}/DONE" ]; then
        extra=(--set "grouping.rho1_reference_model=$(final_checkpoint "$OUT/runs/${name%_rho1}_sft_seed${seed}")")
      fi
      echo "[reproduce] train $name seed $seed -> $run" >&2
      # shellcheck disable=SC2086  # LAUNCH is a command prefix, split on purpose
      $LAUNCH "$BIN" --config "$cfg" "${SETS[@]}" "${extra[@]}" --set "run.seed=$seed" \
        --set "run.output_dir=$run" --resume auto
      touch "$run/DONE"
    fi
    ckpt=$(final_checkpoint "$run")
    for t in "${TASKS[@]}"; do
      spec=${t%%=*} files=${t#*=}
      task=${spec%%[:/]*} shots=0
      [[ "$spec" == *:* ]] && { shots=${spec#*:}; shots=${shots%%/*}; }
      data=${files%%,*} fewshot=""
      [[ "$files" == *,* ]] && fewshot=${files#*,}
      res="$OUT/evals/${name}_seed${seed}/${task}_${shots}shot.json"
      [ -f "$res" ] && continue
      mkdir -p "$(dirname "$res")"
      echo "[reproduce] eval $name seed $seed: $task ${shots}-shot" >&2
      args=(eval --model "$ckpt" --task "$task" --data "$data" --shots "$shots" --device "$DEVICE"
            --limit "$LIMIT" --out "$res.tmp")
      [ -n "$fewshot" ] && args+=(--fewshot-data "$fewshot")
      "$BIN" "${args[@]}" >/dev/null
      mv "$res.tmp" "$res"
    done
  done
done

# The table: rows = configs (in the order given), columns = tasks, mean +- sample std over seeds.
"$PY" - "$OUT" "${#CONFIGS[@]}" "${CONFIGS[@]}" "${SEEDS[@]}" -- "${TASKS[@]}" <<'PYEOF'
import csv, json, math, os, sys
out, n_cfg = sys.argv[1], int(sys.argv[2])
configs = [os.path.basename(c)[:-5] for c in sys.argv[3:3 + n_cfg]]
rest = sys.argv[3 + n_cfg:]
seeds, tasks = rest[:rest.index("--")], rest[rest.index("--") + 1:]
cols = []
for t in tasks:
    spec = t.split("=", 1)[0]
    metric = spec.split("/", 1)[1] if "/" in spec else None
    spec = spec.split("/", 1)[0]
    task, shots = (spec.split(":") + ["0"])[:2]
    cols.append((task, int(shots), metric))

def stats(xs):
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return mean, std

header, rows = ["config"], []
for task, shots, metric in cols:
    header.append(f"{task} ({shots}-shot)")
header.append("average")
csv_rows = [["config", "task", "shots", "metric", "mean", "std", "seeds"]]
for cfg in configs:
    cells, means = [cfg], []
    for task, shots, metric in cols:
        vals, used = [], metric
        for s in seeds:
            r = json.load(open(os.path.join(out, "evals", f"{cfg}_seed{s}", f"{task}_{shots}shot.json")))
            used = metric or ("acc_norm" if "acc_norm" in r["metrics"] else "acc")
            if used not in r["metrics"]:
                sys.exit(f"reproduce.sh: {task} reports {sorted(r['metrics'])}, not '{used}'")
            vals.append(100.0 * r["metrics"][used]["value"])
        mean, std = stats(vals)
        means.append(mean)
        cells.append(f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}"))
        csv_rows.append([cfg, task, shots, used, f"{mean:.4f}", "" if math.isnan(std) else f"{std:.4f}", len(vals)])
    cells.append(f"{sum(means) / len(means):.2f}")
    rows.append(cells)
md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
note = (f"\nMean ± sample standard deviation over seeds {', '.join(seeds)} (percent). "
        "Metric: acc_norm where the task reports it, else acc, unless the --task spec names one.\n")
open(os.path.join(out, "table.md"), "w").write("\n".join(md) + "\n" + note)
with open(os.path.join(out, "table.csv"), "w", newline="") as f:
    csv.writer(f).writerows(csv_rows)
print("\n".join(md))
PYEOF
echo "[reproduce] wrote $OUT/table.md and $OUT/table.csv" >&2
