#!/usr/bin/env bash
# Scores a saved model with the real lmms-eval, offline, and checks its numbers against this project's scorer
# (`make lmms-eval-check`; README, "Score a saved model with lmms-eval"):
#
#   1. .venv-lmms-eval: torch 2.13.0 (CPU) and lmms-eval 0.7.3 with the releases of constraints/lmms_eval.txt
#      (filelock < 4, no torchvision: see that file);
#   2. the model: MODEL_DIR if given, else a tiny model trained by train_accelerate.py on the task's own images (a
#      known-answer check of the harness: it learns to repeat their references), reused on the next run;
#   3. the task: a parquet file in COCO-Caption2017's columns from the synthetic shapes test split, and a task YAML
#      using lmms-eval's own coco_cap functions (evaluation/lmms_eval_task.py);
#   4. lmms-eval's own command line on it (--model huggingface, device cpu, --log_samples), offline;
#   5. eval.py on the same images with lmms-eval's prompt, in bfloat16 like lmms-eval (--dtype bfloat16);
#   6. the checks of evaluation/lmms_eval_check.py: the results and samples files exist, lmms-eval's scores equal
#      score_captions' on its predictions, and eval.py wrote lmms-eval's captions word for word, with its scores.
#
# Usage: scripts/lmms_eval_check.sh [MODEL_DIR]
# Needs the project's .venv (`make setup`) and Java (`make java`). Settings (environment): WORK (outputs), NUM_IMAGES,
# BATCH_SIZE, PYTHON, TORCH_SPEC and TORCH_PIP_ARGS (e.g. "--index-url https://download.pytorch.org/whl/cpu" where
# pip would otherwise fetch the CUDA build of torch).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LMMS_VENV=${LMMS_VENV:-.venv-lmms-eval}
LMMS_CONSTRAINTS=${LMMS_CONSTRAINTS:-constraints/lmms_eval.txt}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_PIP_ARGS=${TORCH_PIP_ARGS:-}
WORK=${WORK:-outputs/lmms_eval_check}
TASK=${TASK:-shapes_cap_test}
NUM_IMAGES=${NUM_IMAGES:-100}
BATCH_SIZE=${BATCH_SIZE:-2}
MODEL=${1:-$WORK/model}

step() { printf '\n== %s (at %s s)\n' "$1" "$SECONDS"; }

[ -x "$VENV/bin/python" ] || { echo "no $VENV: run \`make setup\` first" >&2; exit 2; }
command -v java >/dev/null || { echo "pycocoevalcap needs Java: run \`make java\`" >&2; exit 2; }
[ $# -eq 0 ] || [ -f "$MODEL/config.json" ] || { echo "$MODEL is not a saved model directory" >&2; exit 2; }
mkdir -p "$WORK"
WORK_ABS=$(cd "$WORK" && pwd)
# lmms-eval's COCO caption prompt (lmms_eval/tasks/coco_cap/utils.py: coco_doc_to_text), for training and eval.py.
PROMPT=$("$VENV/bin/python" -c 'from evaluation.lmms_eval_task import LMMS_EVAL_CAPTION_PROMPT as p; print(p)')

step "lmms-eval venv: $LMMS_VENV"
if [ ! -f "$LMMS_VENV/.installed" ] || [ "$LMMS_CONSTRAINTS" -nt "$LMMS_VENV/.installed" ]; then
    "$PYTHON" -m venv "$LMMS_VENV"
    # shellcheck disable=SC2086  # TORCH_PIP_ARGS holds several words
    "$LMMS_VENV/bin/pip" install --quiet $TORCH_PIP_ARGS "$TORCH_SPEC"
    "$LMMS_VENV/bin/pip" install --quiet --no-deps -r "$LMMS_CONSTRAINTS"
    "$LMMS_VENV/bin/pip" uninstall --quiet --yes torchvision 2>/dev/null || true
    touch "$LMMS_VENV/.installed"
fi
"$LMMS_VENV/bin/python" - <<'EOF'
import importlib.metadata as metadata
import importlib.util

import filelock._api  # noqa: F401  (lmms-eval 0.7.3 imports it when evaluation starts)
import torch

assert importlib.util.find_spec("torchvision") is None, "torchvision is installed: it breaks the CPU torch's imports"
assert not torch.version.cuda, f"torch {torch.__version__} is a CUDA build: install the CPU build (TORCH_PIP_ARGS)"
names = ("lmms_eval", "torch", "transformers", "filelock", "datasets", "pycocoevalcap")
print(", ".join(f"{name} {metadata.version(name)}" for name in names) + ", no torchvision")
EOF

if [ $# -eq 0 ] && [ ! -f "$MODEL/config.json" ]; then
    step "training a tiny model on the task's $NUM_IMAGES images: $MODEL"
    "$VENV/bin/python" train_accelerate.py --model tiny --projector_type mlp --stage finetune --dataset shapes \
        --train_split test --max_train_samples "$NUM_IMAGES" --num_train_epochs 100 --per_device_train_batch_size 8 \
        --learning_rate 3e-3 --warmup_ratio 0.05 --mixed_precision no --eval_strategy no --save_steps 100000 \
        --logging_steps 100 --prompt "$PROMPT" \
        --feature_cache_dir "$WORK/feature_cache" --output_dir "$MODEL" --overwrite_output_dir
fi

step "lmms-eval task $TASK: $WORK/task"
"$VENV/bin/python" -m evaluation.lmms_eval_task --task_dir "$WORK/task" --task_name "$TASK" --max_samples "$NUM_IMAGES"

step "lmms-eval (its log: $WORK/lmms_eval.log)"
rm -rf "$WORK/results"
start=$SECONDS
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_DATASETS_CACHE="$WORK_ABS/datasets_cache" \
    "$LMMS_VENV/bin/lmms-eval" --model huggingface \
    --model_args "pretrained=$MODEL,trust_remote_code=True,device=cpu,device_map=cpu" \
    --include_path "$WORK/task" --tasks "$TASK" --batch_size "$BATCH_SIZE" --log_samples \
    --output_path "$WORK/results" > "$WORK/lmms_eval.log" 2>&1 || { tail -30 "$WORK/lmms_eval.log"; exit 1; }
grep -E "^\|" "$WORK/lmms_eval.log" | head -9 || true  # its table (it exits 0 after some failures: the check decides)
echo "lmms-eval took $((SECONDS - start)) s"

step "eval.py with lmms-eval's prompt, in bfloat16: $WORK/eval_py"
rm -rf "$WORK/eval_py"
"$VENV/bin/python" eval.py --model "$MODEL" --dataset shapes --split test --max_samples "$NUM_IMAGES" \
    --prompt "$PROMPT" --dtype bfloat16 \
    --output_dir "$WORK/eval_py" > "$WORK/eval_py.log" 2>&1 || { tail -30 "$WORK/eval_py.log"; exit 1; }

step "checks"
"$VENV/bin/python" -m evaluation.lmms_eval_check --output_path "$WORK/results" --task_name "$TASK" \
    --task_dir "$WORK/task" --eval_dir "$WORK/eval_py" | tee "$WORK/check.log"
echo "done in $SECONDS s"
