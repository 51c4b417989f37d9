#!/usr/bin/env bash
# Text-only styles ablation (issue 19, CapDec-style training; docs/text_styles.md). On one test set:
#   paired   the image-caption pairs of every style (FEATURES/train.pkl), as train.py always trained;
#   text     the same training captions WITHOUT their images: their CLIP text embeddings (process_text.py on
#            train.pkl), CapDec's noise (NOISE); validation on the val captions' text embeddings (no image at all);
#   mixed    one model: the styles of TEXT_STYLES from text only, the others from their image pairs.
# Each run is evaluated on the whole test split and on its two halves (the text-trained styles, the paired
# ones), all with the same --train_captions (the style classifier and n-gram LMs of every style); compare.py
# then tests text and mixed against paired (paired bootstrap over images: p-values) on each of the three.
# Rerunning reuses finished files, runs (last.pt) and evaluations (metrics.json); a run resumes (--resume auto).
#   bash scripts/ablate_text_only.sh                    # PersonalityCaptions, GPT-2 small, ViT-B/32
#   make ablation-text                                  # the demo data with the small models (CPU)
#   SEEDS=3 bash scripts/ablate_text_only.sh --precision bf16   # extra flags go to train.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
FEATURES=${FEATURES:-data/features/personality}   # train.pkl, val.pkl, test.pkl from process_personality.py
CLIP=${CLIP:-pre_model/ViT-B-32.pt}               # the CLIP that made FEATURES: its text tower encodes the captions
GPT2=${GPT2:-pre_model/gpt2}
OUT=${OUT:-output/ablation_text}
TEXT_STYLES=${TEXT_STYLES:-}                      # styles of the mixed run learned from text, comma-separated
#                                                   (default: every second style of the training data)
NOISE=${NOISE:-0.016}                             # CapDec's noise variance on the text rows
SEEDS=${SEEDS:-1}
EPOCHS=${EPOCHS:-10}
BS=${BS:-40}
LR=${LR:-2e-5}
WARMUP=${WARMUP:-5000}
EVAL_FLAGS=${EVAL_FLAGS:-}                        # e.g. --no_java, --decode beam
DATA="$OUT/data"
mkdir -p "$DATA"

echo "== split the styles and the test set ($DATA)"
# paired_part.pkl / text_part.pkl: the training captions of the paired / text-trained styles (features kept: the
# text part is encoded from its captions only); val_paired.pkl; test_paired.pkl / test_text.pkl: the test halves
$PYTHON - "$FEATURES" "$DATA" "$TEXT_STYLES" <<'EOF'
import json, sys
from pathlib import Path
import torch
from stylecap.features import load_features, save_features
from stylecap.train.data import style_vocabulary
features, out, chosen = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
train = load_features(features / "train.pkl")
styles = style_vocabulary(train)
text = [s.strip() for s in chosen.split(",") if s.strip()] or styles[1::2]
unknown = sorted(set(text) - set(styles))
if unknown or not text or len(text) == len(styles):
    sys.exit(f"TEXT_STYLES {text}: give some but not all of the training styles ({unknown} unknown)")
def part(name, src, keep_text):
    store = load_features(features / src)
    is_text = torch.tensor([s in text for s in store.styles] + [False])[store.caption_style.long()]
    keep = is_text if keep_text else ~is_text
    if not (out / name).is_file():
        save_features(out / name, store.subset(keep))
part("paired_part.pkl", "train.pkl", False); part("text_part.pkl", "train.pkl", True)
part("val_paired.pkl", "val.pkl", False)
part("test_paired.pkl", "test.pkl", False); part("test_text.pkl", "test.pkl", True)
(out / "text_styles.json").write_text(json.dumps({"text_styles": text, "paired_styles": [s for s in styles if s not in text]}))
print(f"{len(text)} of {len(styles)} styles from text in the mixed run: {text[:8]}{' ...' if len(text) > 8 else ''}")
EOF

echo "== text embeddings of the training and validation captions (process_text.py)"
$PYTHON process_text.py --caption_path "$FEATURES/train.pkl" --output_path "$DATA/train_text.pkl" --clip_model_path "$CLIP"
$PYTHON process_text.py --caption_path "$FEATURES/val.pkl" --output_path "$DATA/val_text.pkl" --clip_model_path "$CLIP"
$PYTHON process_text.py --caption_path "$DATA/text_part.pkl" --output_path "$DATA/text_part_text.pkl" --clip_model_path "$CLIP"

train_flags=(--gpt2_path "$GPT2" --finetune_gpt2 --epochs "$EPOCHS" --bs_train "$BS" --lr "$LR" --warmup_steps "$WARMUP"
             --resume auto)
declare -A RUN_DATA=(
  [paired]="--data_path $FEATURES/train.pkl --val_path $FEATURES/val.pkl"
  [text]="--data_path $DATA/train_text.pkl --val_path $DATA/val_text.pkl --noise_variance $NOISE"
  [mixed]="--data_path $DATA/paired_part.pkl $DATA/text_part_text.pkl --val_path $DATA/val_paired.pkl --noise_variance $NOISE"
)
declare -A TESTS=([all]="$FEATURES/test.pkl" [text_styles]="$DATA/test_text.pkl" [paired_styles]="$DATA/test_paired.pkl")
declare -A EVALS=()
for kind in paired text mixed; do
  for seed in $(seq 1 "$SEEDS"); do
    run="$OUT/run-$kind-seed$seed"
    if [ -f "$run/checkpoints/last.pt" ]; then
      echo "== $run: trained already"
    else
      echo "== train $run"
      # shellcheck disable=SC2086
      $PYTHON train.py ${RUN_DATA[$kind]} --output_path "$run" --seed "$seed" "${train_flags[@]}" "$@"
    fi
    for test in all text_styles paired_styles; do
      ev="$OUT/eval-$test-$kind-seed$seed"
      if [ -f "$ev/metrics.json" ]; then
        echo "== $ev: evaluated already"
      else
        echo "== evaluate $run on ${TESTS[$test]}"
        # shellcheck disable=SC2086
        $PYTHON train.py --mode eval --model_path "$run/checkpoints/best.pt" --data_path "${TESTS[$test]}" \
            --train_captions "$FEATURES/train.pkl" --clip_model_path "$CLIP" --output_path "$ev" --seed "$seed" $EVAL_FLAGS
      fi
      EVALS[$test]="${EVALS[$test]:-} $ev"
    done
  done
done

for test in all text_styles paired_styles; do
  echo "== compare on the test $test (baseline: paired)"
  labels=()
  for kind in paired text mixed; do for _ in $(seq 1 "$SEEDS"); do labels+=("$kind"); done; done
  # shellcheck disable=SC2086
  $PYTHON compare.py ${EVALS[$test]} --labels "${labels[@]}" --baseline paired --output_path "$OUT/compare-$test"
done
echo "tables: $OUT/compare-{all,text_styles,paired_styles}/ (comparison.md, comparison.html)"
