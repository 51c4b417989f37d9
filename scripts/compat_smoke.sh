#!/usr/bin/env bash
# `make test-compat`'s smoke run: the pipeline on the OLDEST supported stack (requirements-compat.txt, in
# .venv-compat), on small random models and generated demo data, on the CPU. Each step prints its time.
#   1 small models: GPT-2 (GPT-2's real tokenizer) and a Hugging Face CLIP vision folder, built in this venv
#   2 extraction of the demo images with the Hugging Face CLIP backend (--clip_backend hf: no torchvision)
#   3 a short training run (+ --gradient_checkpointing, then --resume auto for one more epoch)
#   4 eval mode   5 predict (feature file, beam search; images)   6 export -> predict: the same captions
#   7 the ClipCap import: a ClipCap-layout state dict with the old GPT-2 attention buffers (ClipCap #76)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${COMPAT_PY:-.venv-compat/bin/python}
W=${COMPAT_OUT:-output/compat_smoke}
export PYTHONUNBUFFERED=1
source scripts/stage_timer.sh
rm -rf "$W" && mkdir -p "$W"

stage "0 versions"
$PY - <<'EOF'
import platform, torch, transformers
print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
assert transformers.__version__.startswith("4."), "the compat venv must hold a transformers 4.x"
EOF

stage "1 small models (GPT-2, Hugging Face CLIP vision) and demo data"
$PY - "$W" <<'EOF'
import sys
from pathlib import Path
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
from stylecap.demo.datasets import generate
from stylecap.demo.small_models import make_gpt2
w = Path(sys.argv[1])
make_gpt2(w / "small_gpt2", seed=0)
torch.manual_seed(0)
cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=224, patch_size=32, projection_dim=512)
CLIPVisionModelWithProjection(cfg).save_pretrained(str(w / "hf_clip"))
CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}).save_pretrained(str(w / "hf_clip"))
generate(w / "demo", seed=0, variant="clean", n_flickr=10, n_personality=40, n_stylized=4)
EOF

stage "2 extraction with the Hugging Face CLIP backend"
F=$W/features
$PY process_personality.py --data_path $W/demo/personality/personality_captions \
    --image_path $W/demo/personality/yfcc_images --clip_model_path $W/hf_clip --clip_backend hf --output_path $F

stage "3 train 1 epoch (+ gradient checkpointing), then --resume auto to epoch 2"
TRAIN=(--data_path $F/train.pkl --val_path $F/val.pkl --gpt2_path $W/small_gpt2 --output_path $W/run
       --finetune_gpt2 --style_mode embedding --bs_train 16 --lr 1e-3 --warmup_steps 5 --eval_subset 8
       --num_samples 2 --log_every 0 --max_len 16)
$PY train.py "${TRAIN[@]}" --epochs 1 --gradient_checkpointing
$PY train.py "${TRAIN[@]}" --epochs 2 --resume auto

stage "4 eval mode"
$PY train.py --mode eval --model_path $W/run/checkpoints/best.pt --data_path $F/test.pkl --no_java \
    --output_path $W/eval

stage "5 predict: the test features in every style (beam search), and images"
$PY predict.py --model_path $W/run/checkpoints/best.pt --features $F/test.pkl --style all --decode beam \
    --output_path $W/predict
mkdir -p $W/images && cp $(ls $W/demo/personality/yfcc_images/*.jpg | head -3) $W/images/
$PY predict.py --model_path $W/run/checkpoints/best.pt --image_path $W/images --clip_model_path $W/hf_clip \
    --clip_backend hf --style all --output_path $W/predict_images

stage "6 export -> predict from the folder: the checkpoint's captions"
$PY export.py $W/run/checkpoints/best.pt $W/exported --eval_dir $W/eval
$PY predict.py --model_path $W/exported --features $F/test.pkl --style all --decode beam --output_path $W/predict_folder
cmp $W/predict/predictions.jsonl $W/predict_folder/predictions.jsonl

stage "7 the ClipCap import (old GPT-2 attention buffers in the state dict)"
$PY - "$W" <<'EOF'
import sys
from pathlib import Path
import torch
from models import ModelConfig, build_model
w = Path(sys.argv[1])
torch.manual_seed(0)
model = build_model(ModelConfig(gpt2_path=str(w / "small_gpt2"), prefix_len=10))
state = model.state_dict()  # ClipCap's layout: clip_project.model.{0,2}.*, gpt.*
n = model.gpt.config.n_positions
for i in range(model.gpt.config.n_layer):  # what transformers 3.x / early 4.x saved (ClipCap #76)
    state[f"gpt.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
    state[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
torch.save(state, w / "clipcap_weights.pt")
EOF
$PY predict.py --model_path $W/clipcap_weights.pt --gpt2_path $W/small_gpt2 --features $F/test.pkl \
    --max_len 12 --output_path $W/predict_clipcap

stages_done
echo "compat smoke: passed (every step)"
