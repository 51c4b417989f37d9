#!/usr/bin/env bash
# PersonalityCaptions with a learned style embedding (215 traits), MLP mapper + GPT-2 tuning.
# Make the features first:
#   python process_personality.py --data_path $PC/personality_captions --image_path $PC/yfcc_images \
#       --output_path data/features/personality
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
FEATURES=${FEATURES:-data/features/personality}
GPT2=${GPT2:-pre_model/gpt2}
OUT=${OUT:-output/personality_mlp_embedding}
STYLE_MODE=${STYLE_MODE:-embedding}   # embedding | token | prompt

$PYTHON train.py --data_path "$FEATURES/train.pkl" --val_path "$FEATURES/val.pkl" --gpt2_path "$GPT2" \
    --output_path "$OUT" --mapping_type mlp --finetune_gpt2 --style_mode "$STYLE_MODE" --style_dim 64 \
    --prefix_len 10 --lr 2e-5 --epochs 10 --bs_train 40 --warmup_steps 5000 \
    --save_by epoch --max_checkpoint_num 3 "$@"
