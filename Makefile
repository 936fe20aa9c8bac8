# Fresh-machine entry points. `make demo` runs the main job offline (the tiny projector comparison); `make test` the tests.
# Both create .venv with the CPU build of torch (a bare `torch` requirement would pull a multi-GB CUDA build) and every
# package at the version pinned in constraints/pinned.txt, so that the README's table reproduces.
PYTHON ?= python3
VENV ?= .venv
VENV_TRANSFORMERS4 ?= .venv-transformers4
VENV_NEWEST ?= .venv-newest
TORCH_CPU ?= torch==2.13.0
PINNED ?= constraints/pinned.txt
PINNED_TRANSFORMERS4 ?= constraints/transformers4.txt
# The suite's tests of the Hub-side code (config, model, processor, Auto classes) and of the stage-1 Q-Former.
HUB_TESTS ?= tests/test_config.py tests/test_processing.py tests/test_modeling.py tests/test_cache_names.py \
	tests/test_cross_attention.py tests/test_qformer_pretraining.py tests/test_auto_loading.py tests/test_hub_lmms_eval.py \
	tests/test_tiles.py tests/test_visual_expert.py tests/test_adapter.py \
	tests/test_tokenized.py tests/test_generation.py

.PHONY: setup demo test lint java chromium test-browser lmms-eval-check test-transformers4 setup-newest test-newest pin

$(VENV)/.installed: setup.cfg pyproject.toml $(PINNED)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -c $(PINNED) $(TORCH_CPU) -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

java:  # pycocoevalcap's PTB tokenizer and METEOR run Java
	@command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless)

demo: setup java
	$(VENV)/bin/python train_accelerate.py --config configs/tiny_shapes.yaml --compare all --overwrite_output_dir

test: setup java
	$(VENV)/bin/python -m pytest

chromium:  # the demo page's browser tests drive Debian's Chromium (playwright downloads no browser here)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# The demo page (app.py) in a real browser: uploads, answers, maps and every bad input. Not part of `make test`.
test-browser: setup java chromium
	VLM_BROWSER_TESTS=1 $(VENV)/bin/python -m pytest tests/browser

lint: setup  # pyflakes, import order, style (configured in pyproject.toml)
	$(VENV)/bin/ruff check .

# The Hub-side code under the last 4.x release, pinned too.
$(VENV_TRANSFORMERS4)/.installed: setup.cfg pyproject.toml $(PINNED_TRANSFORMERS4)
	$(PYTHON) -m venv $(VENV_TRANSFORMERS4)
	$(VENV_TRANSFORMERS4)/bin/pip install --quiet -c $(PINNED_TRANSFORMERS4) $(TORCH_CPU) transformers \
		huggingface_hub accelerate tokenizers pillow safetensors pytest
	touch $@

# Then across versions: a model saved by the pinned 5.x loaded by 4.57 in a fresh process, and the other way round.
test-transformers4: $(VENV_TRANSFORMERS4)/.installed setup
	$(VENV_TRANSFORMERS4)/bin/python -m pytest -p no:cacheprovider $(HUB_TESTS)
	VLM_LOADER_PYTHON=$(CURDIR)/$(VENV_TRANSFORMERS4)/bin/python $(VENV)/bin/python -m pytest tests/test_auto_loading.py
	VLM_LOADER_PYTHON=$(CURDIR)/$(VENV)/bin/python $(VENV_TRANSFORMERS4)/bin/python -m pytest -p no:cacheprovider tests/test_auto_loading.py

# The newest releases, unpinned: what `pip install -e .` gives a user today (torch stays the CPU build). Upgraded at
# every call, so that CI meets a new release at the next submission.
setup-newest:
	$(PYTHON) -m venv $(VENV_NEWEST)
	$(VENV_NEWEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager $(TORCH_CPU) -e ".[dev]"

# The whole suite on the newest releases, after naming those that moved since the pins; then loading across versions
# between the newest and 4.57, both ways.
test-newest: setup-newest $(VENV_TRANSFORMERS4)/.installed java
	$(VENV_NEWEST)/bin/python .ci/compare_releases.py $(PINNED)
	$(VENV_NEWEST)/bin/python -m pytest -p no:cacheprovider
	VLM_LOADER_PYTHON=$(CURDIR)/$(VENV_TRANSFORMERS4)/bin/python $(VENV_NEWEST)/bin/python -m pytest -p no:cacheprovider tests/test_auto_loading.py
	VLM_LOADER_PYTHON=$(CURDIR)/$(VENV_NEWEST)/bin/python $(VENV_TRANSFORMERS4)/bin/python -m pytest -p no:cacheprovider tests/test_auto_loading.py

# Moves the pins to the newest releases (keeping the file's comments); then run `make demo` and update the README.
pin: setup-newest
	grep '^#' $(PINNED) > $(PINNED).new
	$(VENV_NEWEST)/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' >> $(PINNED).new
	mv $(PINNED).new $(PINNED)

# The real lmms-eval 0.7.3 scoring a saved model offline, checked against this project's scorer and against eval.py
# --dtype bfloat16 (same captions word for word, same scores; scripts/lmms_eval_check.sh; README, "Score a saved model
# with lmms-eval"). Its own venv, .venv-lmms-eval (torch 2.13.0 CPU, then the releases of constraints/lmms_eval.txt:
# filelock < 4, no torchvision). MODEL_DIR=<saved model> scores that model; without it, a tiny model is trained on the
# task's images. Not in CI: the venv is about 130 packages (wandb, openai, sentence-transformers, scikit-learn, opencv,
# ...) to download on a fresh machine; once they are installed the check itself runs in about 2.5 minutes on 2 CPU
# cores, 1.5 reusing the model (measured 2026-12-05).
lmms-eval-check: setup java
	PYTHON=$(PYTHON) VENV=$(VENV) TORCH_SPEC=$(TORCH_CPU) scripts/lmms_eval_check.sh $(MODEL_DIR)
