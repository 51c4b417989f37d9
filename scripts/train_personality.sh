#!/usr/bin/env bash
# PersonalityCaptions with a learned style embedding (215 traits), MLP mapper + GPT-2 tuning.
# Make the features first:
#   python process_personality.py --data_path $PC/personality_captions --image_path $PC/yfcc_images \
#       --output_path data/features/personality
# Before training, scripts/check_inputs.py checks every input (packages, features, GPT-2, and for missing
# features the CLIP weights and dataset files) and prints one list of what is missing, each with its
# source and command; CHECK_ONLY=1 stops after that check. Dataset sources and layouts: docs/data.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
FEATURES=${FEATURES:-data/features/personality}
GPT2=${GPT2:-pre_model/gpt2}
OUT=${OUT:-output/personality_mlp_embedding}
STYLE_MODE=${STYLE_MODE:-embedding}   # embedding | token | prompt
PC=${PC:-data}                        # personality_captions/ + yfcc_images/ (only to make missing features)
CLIP=${CLIP:-pre_model/ViT-B-32.pt}   # CLIP weights (only to make missing features)

$PYTHON scripts/check_inputs.py --script "scripts/$(basename "$0")" --python "$PYTHON" --dataset personality \
    --train "$FEATURES/train.pkl" --val "$FEATURES/val.pkl" --gpt2 "$GPT2" --out "$OUT" --clip "$CLIP" --raw "$PC" \
    --feature_vars FEATURES,FEATURES -- "$@"
if [ "${CHECK_ONLY:-0}" = 1 ]; then echo "all inputs present (CHECK_ONLY=1: not training)"; exit 0; fi

$PYTHON train.py --data_path "$FEATURES/train.pkl" --val_path "$FEATURES/val.pkl" --gpt2_path "$GPT2" \
    --output_path "$OUT" --mapping_type mlp --finetune_gpt2 --style_mode "$STYLE_MODE" --style_dim 64 \
    --prefix_len 10 --lr 2e-5 --epochs 10 --bs_train 40 --warmup_steps 5000 \
    --save_by epoch --max_checkpoint_num 3 "$@"
