# Fresh-machine entry points. `make demo` runs the main job offline (the tiny projector comparison); `make test` the tests.
# Both create .venv with the CPU build of torch first (a bare `torch` requirement would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
VENV_TRANSFORMERS4 ?= .venv-transformers4
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test lint test-transformers4 java

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH_CPU)
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

java:  # pycocoevalcap's PTB tokenizer and METEOR run Java
	@command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless)

demo: setup java
	$(VENV)/bin/python train_accelerate.py --config configs/tiny_shapes.yaml --compare all --overwrite_output_dir

test: setup java
	$(VENV)/bin/python -m pytest

lint: setup  # pyflakes, import order, style (configured in pyproject.toml)
	$(VENV)/bin/ruff check .

# The Hub-side code (config, model, processor, Auto-class loading) and the stage-1 Q-Former under the last 4.x release.
$(VENV_TRANSFORMERS4)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV_TRANSFORMERS4)
	$(VENV_TRANSFORMERS4)/bin/pip install --quiet $(TORCH_CPU)
	$(VENV_TRANSFORMERS4)/bin/pip install --quiet "transformers==4.57.6" "huggingface_hub<1.0" accelerate tokenizers pillow safetensors pytest
	touch $@

# Then across versions: a model saved by 5.x loaded by 4.57 in a fresh process, and the other way round.
test-transformers4: $(VENV_TRANSFORMERS4)/.installed setup
	$(VENV_TRANSFORMERS4)/bin/python -m pytest -p no:cacheprovider tests/test_config.py tests/test_processing.py tests/test_modeling.py tests/test_cross_attention.py tests/test_qformer_pretraining.py tests/test_auto_loading.py tests/test_hub_lmms_eval.py
	VLM_LOADER_PYTHON=$(CURDIR)/$(VENV_TRANSFORMERS4)/bin/python $(VENV)/bin/python -m pytest tests/test_auto_loading.py
	VLM_LOADER_PYTHON=$(CURDIR)/$(VENV)/bin/python $(VENV_TRANSFORMERS4)/bin/python -m pytest -p no:cacheprovider tests/test_auto_loading.py
