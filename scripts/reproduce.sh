#!/usr/bin/env bash
# Reproduces the SFT-GO paper's tables: trains every config x seed, evaluates each final checkpoint
# with `sftgo-train eval` (multiple choice) and lm-evaluation-harness (IFEval, TruthfulQA generation),
# and writes the tables as Markdown and CSV (mean +- std over seeds, in percent). docs/reproduce.md.
#
# Tables 1-4 in one command (the paper's layout, with the paper's value and our difference beside
# each cell):
#   scripts/reproduce.sh --tables --seeds "1 2 3 4 5" [--datasets "lima alpaca"] [--models "3b 8b"]
#       [--eval-dir data/eval] [--lm-eval .venv/bin/lm_eval | --lm-eval none] [--eta-sweep "55 70 85 90"]
#   -> OUT/tables.md, OUT/table{1,2,3,4}.csv (scripts/reproduce_tables.py builds them)
#
# Any list of configs with the tasks you name (one column per task):
#   scripts/reproduce.sh --configs "configs/lima_llama3b_sft.yaml configs/lima_llama3b_tfidf.yaml" \
#       --seeds "1 2 3" \
#       --task arc_challenge=data/eval/arc_challenge_test.jsonl \
#       --task mmlu:5=data/eval/mmlu_test.jsonl,data/eval/mmlu_dev.jsonl \
#       --task truthfulqa_mc2/acc=data/eval/truthfulqa_mc.jsonl
#   -> OUT/table.md and OUT/table.csv (each column names its metric)
#
# Options:
#   --tables               the paper's configs and eight multiple-choice columns, then Tables 1-4
#   --datasets "lima alpaca"  --models "3b 8b"   which rows --tables trains (default: all)
#   --eval-dir DIR         where --tables reads the benchmark files (default data/eval): mmlu.jsonl,
#                          mmlu_dev.jsonl, mathqa.jsonl, arc_challenge.jsonl, openbookqa.jsonl,
#                          hellaswag.jsonl, truthfulqa_mc.jsonl (docs/evaluation.md says how to make them)
#   --lm-eval CMD          lm_eval's command line, run for ifeval and truthfulqa_gen on each checkpoint
#                          (--tables; default .venv/bin/lm_eval) into OUT/lm_eval/<run>/<task>/;
#                          "none" only reads result JSON already there
#   --lm-eval-args "ARGS"  more arguments for every lm_eval call
#   --eta-sweep "P ..."    --tables also trains the Figure 3 sweep (LIMA x {tfidf,rho1,llmlingua2} at each eta)
#   --launch8b "CMD"       prefix for the 8B configs of --tables (default "mpirun -np 8")
#   --configs "A.yaml B.yaml"  the configs (without --tables)
#   --task NAME[:SHOTS][/METRIC]=FILE[,FEWSHOT_FILE]  a column (repeatable; without --tables)
#   --metric acc|acc_norm  metric of the multiple-choice columns that name none, in both modes: acc
#                          (default, the paper's) or acc_norm (ARC, OpenBookQA, HellaSwag, MathQA;
#                          MMLU and TruthfulQA report acc only). The tables name the metric they used
#   --seeds "1 2 3"        run.seed values (default 1)
#   --out DIR              results directory (default results)
#   --set KEY=VALUE        passed to every training run (repeatable)
#   --launch "CMD"         prefix for the training command, e.g. "mpirun -np 8"
#   --device auto|cpu|cuda for evaluation    --limit N   evaluate the first N documents only
#   --no-setup             skip scripts/setup.sh (the build and the venv are already there)
#   -h, --help             this text
# A run whose OUT/runs/<config>_seed<S>/DONE exists is not trained again, and an evaluation whose
# JSON exists is not repeated, so an interrupted reproduction continues where it stopped.
# *_rho1 configs use the final checkpoint of the *_sft run with the same prefix and seed as their
# reference model when this script trained it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SFTGO_BUILD_DIR:-build}
BIN="$BUILD_DIR/bin/sftgo-train"
CONFIGS=() SEEDS=(1) TASKS=() SETS=() OUT=results LAUNCH="" DEVICE=auto LIMIT="" SETUP=1
TABLES=0 DATASETS=(lima alpaca) MODELS=(3b 8b) EVAL_DIR=data/eval LM_EVAL=.venv/bin/lm_eval ETAS=()
LAUNCH8B="mpirun -np 8" LM_EVAL_ARGS="" METRIC=acc

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
    --limit)
      LIMIT=${2:?}
      [[ "$LIMIT" =~ ^[1-9][0-9]*$ ]] || { echo "reproduce.sh: --limit takes a number of documents >= 1, got '$LIMIT'" >&2; exit 2; }
      shift ;;
    --no-setup) SETUP=0 ;;
    --tables) TABLES=1 ;;
    --datasets) read -r -a DATASETS <<<"${2:?}"; shift ;;
    --models) read -r -a MODELS <<<"${2:?}"; shift ;;
    --eval-dir) EVAL_DIR=${2:?}; shift ;;
    --lm-eval) LM_EVAL=${2:?}; shift ;;
    --lm-eval-args) LM_EVAL_ARGS=${2:?}; shift ;;
    --eta-sweep) read -r -a ETAS <<<"${2:?}"; shift ;;
    --launch8b) LAUNCH8B=${2:?}; shift ;;
    --metric) METRIC=${2:?}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
if ((TABLES)); then
  # The paper's rows (make_paper_configs.py): 4 methods per dataset x model, Table 4's extra cells
  # and the eta sweep; the eight multiple-choice evaluations of Tables 1-2.
  ((${#CONFIGS[@]} == 0 && ${#TASKS[@]} == 0)) || die "--tables chooses the configs and tasks itself: drop --configs/--task"
  for d in "${DATASETS[@]}"; do [[ "$d" == lima || "$d" == alpaca ]] || die "--datasets: unknown '$d' (lima, alpaca)"; done
  for m in "${MODELS[@]}"; do [[ "$m" == 3b || "$m" == 8b ]] || die "--models: unknown '$m' (3b, 8b)"; done
  for e in "${ETAS[@]}"; do [[ "$e" =~ ^[0-9]+(\.[0-9]*[1-9])?$ ]] || die "--eta-sweep: '$e' is not a percentile like 55 or 82.5"; done
  for d in "${DATASETS[@]}"; do
    for m in "${MODELS[@]}"; do
      for meth in sft rho1 tfidf llmlingua2; do CONFIGS+=("configs/${d}_llama${m}_${meth}.yaml"); done
      if [ "$d" == lima ]; then
        [ "$m" == 3b ] && CONFIGS+=("configs/lima_llama3b_llmlingua2_static.yaml")
        [ "$m" == 8b ] && CONFIGS+=("configs/lima_llama8b_llmlingua2_decaying.yaml")
      fi
    done
  done
  if ((${#ETAS[@]})); then
    mkdir -p "$OUT/configs"
    PYG=.venv/bin/python; [ -x "$PYG" ] || PYG=python3
    "$PYG" scripts/make_paper_configs.py --eta-sweep "$(IFS=,; echo "${ETAS[*]}")" --out "$OUT/configs" >/dev/null
    for m in "${MODELS[@]}"; do
      for meth in tfidf rho1 llmlingua2; do
        for e in "${ETAS[@]}"; do CONFIGS+=("$OUT/configs/lima_llama${m}_${meth}_eta${e}.yaml"); done
      done
    done
  fi
  E=$EVAL_DIR
  TASKS=("mmlu=$E/mmlu.jsonl" "mmlu:5=$E/mmlu.jsonl,$E/mmlu_dev.jsonl" "mathqa=$E/mathqa.jsonl"
         "arc_challenge=$E/arc_challenge.jsonl" "openbookqa=$E/openbookqa.jsonl" "hellaswag=$E/hellaswag.jsonl"
         "truthfulqa_mc1=$E/truthfulqa_mc.jsonl" "truthfulqa_mc2=$E/truthfulqa_mc.jsonl")
  if [ "$LM_EVAL" != none ]; then
    command -v "${LM_EVAL%% *}" >/dev/null || die "--lm-eval: '$LM_EVAL' not found (install lm_eval, or --lm-eval none to read existing results)"
  fi
fi
[[ "$METRIC" == acc || "$METRIC" == acc_norm ]] || die "--metric: '$METRIC' is not acc or acc_norm"
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
      sft="${name%%_rho1*}_sft"  # lima_llama3b_rho1[_eta55] -> lima_llama3b_sft
      if [[ "$name" == *_rho1 || "$name" == *_rho1_eta* ]] && [ -f "$OUT/runs/${sft}_seed${seed}/DONE" ]; then
        extra=(--set "grouping.rho1_reference_model=$(final_checkpoint "$OUT/runs/${sft}_seed${seed}")")
      fi
      launch=$LAUNCH
      ((TABLES)) && [[ "$name" == *_llama8b_* && -z "$LAUNCH" ]] && launch=$LAUNCH8B
      echo "[reproduce] train $name seed $seed -> $run" >&2
      # shellcheck disable=SC2086  # launch is a command prefix, split on purpose
      $launch "$BIN" --config "$cfg" "${SETS[@]}" "${extra[@]}" --set "run.seed=$seed" \
        --set "run.output_dir=$run" --resume auto
      touch "$run/DONE"
    fi
    ckpt=$(final_checkpoint "$run")
    # A LoRA run's checkpoint holds the frozen base weights and its adapter in adapter/: score both.
    adapter=(); peft=""
    [ -d "$ckpt/adapter" ] && { adapter=(--adapter "$ckpt/adapter"); peft=",peft=$ckpt/adapter"; }
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
      lim=(); [ -n "$LIMIT" ] && lim=(--limit "$LIMIT")  # no --limit: every document
      args=(eval --model "$ckpt" "${adapter[@]}" --task "$task" --data "$data" --shots "$shots"
            --device "$DEVICE" "${lim[@]}" --out "$res.tmp")
      [ -n "$fewshot" ] && args+=(--fewshot-data "$fewshot")
      "$BIN" "${args[@]}" >/dev/null
      mv "$res.tmp" "$res"
    done
    # Generation metrics (Tables 5-8): lm-evaluation-harness on the same checkpoint. LIMA models are
    # chat-tuned with the llama3 template, so their prompts go through the checkpoint's chat template.
    if ((TABLES)) && [ "$LM_EVAL" != none ]; then
      for task in ifeval truthfulqa_gen; do
        dir="$OUT/lm_eval/${name}_seed${seed}/$task"
        [ -n "$(find "$dir" -name 'results*.json' 2>/dev/null | head -n 1)" ] && continue
        chat=(); [[ "$name" == lima_* ]] && chat=(--apply_chat_template)
        dtype=bfloat16; [ "$DEVICE" == cpu ] && dtype=float32
        lim=(); [ -n "$LIMIT" ] && lim=(--limit "$LIMIT")
        echo "[reproduce] lm_eval $name seed $seed: $task" >&2
        # shellcheck disable=SC2086  # LM_EVAL / LM_EVAL_ARGS are command words, split on purpose
        $LM_EVAL --model hf --model_args "pretrained=$ckpt,dtype=$dtype$peft" --tasks "$task" "${chat[@]}" \
          --batch_size auto --output_path "$dir" "${lim[@]}" $LM_EVAL_ARGS >&2
      done
    fi
  done
done

if ((TABLES)); then
  "$PY" scripts/reproduce_tables.py "$OUT" --seeds "${SEEDS[*]}" --datasets "${DATASETS[*]}" \
    --models "${MODELS[*]}" --eta-sweep "${ETAS[*]}" --metric "$METRIC"
  echo "[reproduce] wrote $OUT/tables.md and $OUT/table{1,2,3,4}.csv" >&2
  exit 0
fi

# The table: rows = configs (in the order given), columns = tasks, mean +- sample std over seeds.
"$PY" - "$OUT" "$METRIC" "${#CONFIGS[@]}" "${CONFIGS[@]}" "${SEEDS[@]}" -- "${TASKS[@]}" <<'PYEOF'
import csv, json, math, os, sys
out, default_metric, n_cfg = sys.argv[1], sys.argv[2], int(sys.argv[3])
configs = [os.path.basename(c)[:-5] for c in sys.argv[4:4 + n_cfg]]
rest = sys.argv[4 + n_cfg:]
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

rows, used_by_col = [], {}
csv_rows = [["config", "task", "shots", "metric", "mean", "std", "seeds"]]
for cfg in configs:
    cells, means = [cfg], []
    for c, (task, shots, metric) in enumerate(cols):
        vals = []
        for s in seeds:
            r = json.load(open(os.path.join(out, "evals", f"{cfg}_seed{s}", f"{task}_{shots}shot.json")))
            # The column's metric: the spec's, else --metric where the task reports it, else acc.
            used = metric or (default_metric if default_metric in r["metrics"] else "acc")
            if used not in r["metrics"]:
                sys.exit(f"reproduce.sh: {task} reports {sorted(r['metrics'])}, not '{used}'")
            vals.append(100.0 * r["metrics"][used]["value"])
            used_by_col.setdefault(c, used)
        mean, std = stats(vals)
        means.append(mean)
        cells.append(f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}"))
        csv_rows.append([cfg, task, shots, used, f"{mean:.4f}", "" if math.isnan(std) else f"{std:.4f}", len(vals)])
    cells.append(f"{sum(means) / len(means):.2f}")
    rows.append(cells)
header = ["config"] + [f"{task} ({shots}-shot, {used_by_col[c]})" for c, (task, shots, _) in enumerate(cols)]
header.append("average")
md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
note = (f"\nMean ± sample standard deviation over seeds {', '.join(seeds)} (percent). Each column names its "
        f"metric: the --task spec's, else {default_metric} (--metric) where the task reports it, else acc.\n")
open(os.path.join(out, "table.md"), "w").write("\n".join(md) + "\n" + note)
with open(os.path.join(out, "table.csv"), "w", newline="") as f:
    csv.writer(f).writerows(csv_rows)
print("\n".join(md))
PYEOF
echo "[reproduce] wrote $OUT/table.md and $OUT/table.csv" >&2
