#!/usr/bin/env bash
# Style-injection ablation: train every --style_mode (MODES: the table in models/style_modes.py)
# on the same features with the same settings (SEEDS seeds each), evaluate each on the test split, then
# compare.py against the embedding baseline (paired bootstrap over images). Rerunning it reuses finished runs and evaluations:
# a run with last.pt is not trained again, an eval folder with metrics.json is not scored again; an
# interrupted run resumes (--resume auto).
#   bash scripts/ablate_style.sh                      # PersonalityCaptions, GPT-2 small, ClipCap's settings
#   SEEDS=3 EPOCHS=5 bash scripts/ablate_style.sh --precision bf16   # extra flags go to train.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
FEATURES=${FEATURES:-data/features/personality}   # train.pkl, val.pkl, test.pkl from process_personality.py
GPT2=${GPT2:-pre_model/gpt2}
OUT=${OUT:-output/ablation}
MODES=${MODES:-$($PYTHON -c 'from models.style_modes import STYLE_MODES; print(*STYLE_MODES)')}  # every mode
SEEDS=${SEEDS:-1}
EPOCHS=${EPOCHS:-10}
BS=${BS:-40}
LR=${LR:-2e-5}
WARMUP=${WARMUP:-5000}
EVAL_FLAGS=${EVAL_FLAGS:-}                        # e.g. --no_java, --decode beam

paths=()
for mode in $MODES; do
  for seed in $(seq 1 "$SEEDS"); do
    run="$OUT/run-$mode-seed$seed"
    ev="$OUT/eval-$mode-seed$seed"
    if [ -f "$run/checkpoints/last.pt" ]; then
      echo "== $run: trained already"
    else
      echo "== train $run"
      $PYTHON train.py --data_path "$FEATURES/train.pkl" --val_path "$FEATURES/val.pkl" --gpt2_path "$GPT2" \
          --output_path "$run" --finetune_gpt2 --style_mode "$mode" --seed "$seed" --epochs "$EPOCHS" \
          --bs_train "$BS" --lr "$LR" --warmup_steps "$WARMUP" --resume auto "$@"
    fi
    if [ -f "$ev/metrics.json" ]; then
      echo "== $ev: evaluated already"
    else
      echo "== evaluate $run on $FEATURES/test.pkl"
      # shellcheck disable=SC2086
      $PYTHON train.py --mode eval --model_path "$run/checkpoints/best.pt" --data_path "$FEATURES/test.pkl" \
          --output_path "$ev" --seed "$seed" $EVAL_FLAGS
    fi
    paths+=("$ev")
  done
done
echo "== compare"
$PYTHON compare.py "${paths[@]}" --baseline style_mode=embedding --output_path "$OUT/compare"
echo "comparison: $(pwd)/$OUT/compare/comparison.html"
