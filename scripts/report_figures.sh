#!/usr/bin/env bash
# The report and comparison pages and plots shown in docs/ (report.png, comparison.png, curves.png,
# metrics.png): three tiny runs (style_mode embedding x seeds 3 and 4, token x seed 3) of the small random
# models on tests/helpers.py's synthetic features, each evaluated on the same 80 test images, then compared,
# then screenshotted with headless Chromium. About 3 minutes on 2 CPU cores.
#   bash scripts/report_figures.sh [OUT=output/report_figures]
set -euo pipefail
OUT=${1:-output/report_figures}
PY=${PYTHON:-python}
mkdir -p "$OUT"
[ -d "$OUT/models/small_gpt2" ] || $PY scripts/make_small_models.py --out "$OUT/models"
$PY -c "import sys; from pathlib import Path; from tests.helpers import synthetic_features as s; o = Path(sys.argv[1])
s(o / 'train.pkl', n_images=160); s(o / 'val.pkl', n_images=16, seed=1); s(o / 'test.pkl', n_images=80, seed=5)" "$OUT"
paths=()
for run in embedding:3 embedding:4 token:3; do
  mode=${run%:*}; seed=${run#*:}
  $PY train.py --data_path "$OUT/train.pkl" --val_path "$OUT/val.pkl" --gpt2_path "$OUT/models/small_gpt2" \
      --output_path "$OUT/run-$mode-$seed" --bs_train 16 --lr 3e-3 --warmup_steps 2 --finetune_gpt2 --eval_subset 16 \
      --eval_step 5 --epochs 4 --seed "$seed" --style_mode "$mode" --device cpu
  $PY train.py --mode eval --model_path "$OUT/run-$mode-$seed/checkpoints/last.pt" --data_path "$OUT/test.pkl" \
      --output_path "$OUT/eval-$mode-$seed" --no_java --device cpu
  paths+=("$OUT/run-$mode-$seed" "$OUT/eval-$mode-$seed")
done
$PY compare.py "${paths[@]}" --baseline style_mode=embedding --resamples 200 --output_path "$OUT/compare"
shot() { chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --screenshot="$1" --window-size="$2" "file://$(realpath "$3")"; }
shot "$OUT/report_full.png" 1280,3300 "$OUT/eval-token-3/report.html"  # down to the first image cards
$PY -c "import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB')
im.resize((960, im.height * 960 // im.width), Image.LANCZOS).quantize(64).save('docs/report.png', optimize=True)" "$OUT/report_full.png"
shot docs/comparison.png 1280,1400 "$OUT/compare/comparison.html"
cp "$OUT/compare/curves.png" "$OUT/compare/metrics.png" docs/
