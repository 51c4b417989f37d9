#!/usr/bin/env bash
# `make demo`: the whole pipeline on generated demo data with small models, on the CPU, in minutes:
# demo data -> small models (and the small CLIP trained on the demo data, whose image and text embeddings
# align: pre_model/small_clip_aligned.pt, docs/demo.md) -> CLIP features -> train (TensorBoard in ./output)
# -> eval -> predict.
# Rerunning it is cheap: finished stages are reused (features are up to date, training resumes).
# `bash scripts/demo.sh features` stops after the features (what `make ablation` needs).
# Each stage prints its time, and the end the total (scripts/stage_timer.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
FEAT=data/features
RUN=output/demo_personality
CLIP=pre_model/small_clip_aligned.pt
source scripts/stage_timer.sh

stage "1/6 demo data (data/demo), small models and the aligned small CLIP (pre_model/small_*)"
$PY scripts/make_demo_data.py --out data/demo
# the aligned CLIP is retrained only when the demo's training images or the recipe change (its .json sidecar)
$PY scripts/make_small_models.py --out pre_model --aligned_data data/demo/personality
$PY -m stylecap.demo.aligned_clip --clip_model_path $CLIP --data_path data/demo/personality \
    --output output/demo_clip_retrieval.json

stage "2/6 CLIP features"
$PY process_flickr.py --caption_path data/demo/flickr30k/dataset_flickr30k.json \
    --image_path data/demo/flickr30k/flickr30k-images --clip_model_path $CLIP \
    --output_path $FEAT/demo_flickr.pkl
$PY process_personality.py --data_path data/demo/personality/personality_captions \
    --image_path data/demo/personality/yfcc_images --clip_model_path $CLIP \
    --output_path $FEAT/demo_personality

if [ "${1:-}" = features ]; then stages_done; exit 0; fi

stage "3/6 train: MLP + GPT-2 tuning with a style embedding (tensorboard --logdir ./output)"
$PY train.py --data_path $FEAT/demo_personality/train.pkl --val_path $FEAT/demo_personality/val.pkl \
    --gpt2_path pre_model/small_gpt2 --output_path $RUN --finetune_gpt2 --style_mode embedding \
    --epochs 10 --bs_train 32 --lr 1e-3 --warmup_steps 30 --eval_subset 100 --resume auto

stage "4/6 evaluate on the test split (5 references per image)"
$PY train.py --mode eval --model_path $RUN/checkpoints/best.pt --data_path $FEAT/demo_personality/test.pkl \
    --output_path output/demo_eval

stage "5/6 predict: a few demo images in every style"
mkdir -p output/demo_images
cp $(ls data/demo/personality/yfcc_images/*.jpg | head -3) output/demo_images/
$PY predict.py --model_path $RUN/checkpoints/best.pt --image_path output/demo_images \
    --clip_model_path $CLIP --style all --output_path output/demo_predict --save_images

stage_end
echo "== 6/6 done"
echo "metrics:     output/demo_eval/metrics.json"
echo "report:      $(pwd)/output/demo_eval/report.html"
echo "predictions: output/demo_predict/caption_generate.txt (captioned images in output/demo_predict/images)"
echo "tensorboard: tensorboard --logdir ./output"
stages_done
