#!/usr/bin/env bash
# Transformer mapper with GPT-2 frozen (ClipCap's "Transformer" row): only the mapper trains and only
# it is saved in checkpoints. ClipCap used K = constant_len = 40 for this setting and a higher lr.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
TRAIN=${TRAIN:-data/features/flickr30k_train.pkl}
VAL=${VAL:-data/features/flickr30k_val.pkl}
GPT2=${GPT2:-pre_model/gpt2}
OUT=${OUT:-output/flickr30k_transformer_frozen}

$PYTHON train.py --data_path "$TRAIN" --val_path "$VAL" --gpt2_path "$GPT2" --output_path "$OUT" \
    --mapping_type transformer --num_layers 8 --prefix_len 40 --constant_len 40 --normalize_prefix \
    --style_mode none --lr 2e-5 --epochs 10 --bs_train 40 --warmup_steps 5000 \
    --save_by epoch --max_checkpoint_num 3 "$@"
