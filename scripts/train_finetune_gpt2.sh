#!/usr/bin/env bash
# "MLP + GPT-2 tuning" (ClipCap's default): MLP mapper, GPT-2 trained with it, plain captions (Flickr30k).
# Make the features first:
#   python process_flickr.py --caption_path $FLICKR/dataset_flickr30k.json \
#       --image_path $FLICKR/flickr30k-images --output_path data/features/flickr30k.pkl
# Before training, scripts/check_inputs.py checks every input (packages, features, GPT-2, and for missing
# features the CLIP weights and dataset files) and prints one list of what is missing, each with its
# source and command; CHECK_ONLY=1 stops after that check. Dataset sources and layouts: docs/data.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
TRAIN=${TRAIN:-data/features/flickr30k_train.pkl}
VAL=${VAL:-data/features/flickr30k_val.pkl}
GPT2=${GPT2:-pre_model/gpt2}
OUT=${OUT:-output/flickr30k_mlp_finetune}
FLICKR=${FLICKR:-data/flickr30k}       # dataset_flickr30k.json + flickr30k-images/ (only to make missing features)
CLIP=${CLIP:-pre_model/ViT-B-32.pt}    # CLIP weights (only to make missing features)

$PYTHON scripts/check_inputs.py --script "scripts/$(basename "$0")" --python "$PYTHON" --dataset flickr30k \
    --train "$TRAIN" --val "$VAL" --gpt2 "$GPT2" --out "$OUT" --clip "$CLIP" --raw "$FLICKR" -- "$@"
if [ "${CHECK_ONLY:-0}" = 1 ]; then echo "all inputs present (CHECK_ONLY=1: not training)"; exit 0; fi

$PYTHON train.py --data_path "$TRAIN" --val_path "$VAL" --gpt2_path "$GPT2" --output_path "$OUT" \
    --mapping_type mlp --finetune_gpt2 --style_mode none \
    --prefix_len 10 --lr 2e-5 --epochs 10 --bs_train 40 --warmup_steps 5000 \
    --save_by epoch --max_checkpoint_num 3 "$@"
