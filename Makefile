# autoresearch: `make demo` runs the loop on the embedded defaults, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build: on Linux without an NVIDIA GPU (no nvidia-smi), PyTorch's CPU wheels
# (about 1.4 GB installed, not the 5.9 GB of CUDA libraries) when their index answers;
# else, and elsewhere, the package index's default (CUDA on Linux). Either can be chosen:
# make demo TORCH_INDEX= (the default index) or TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_SPEC ?= torch>=2.4,<3
ifeq ($(shell uname -s)$(shell command -v nvidia-smi),Linux)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
endif
TAG ?= demo-$(shell date +%Y%m%d-%H%M%S)
EXPERIMENTS ?= 9

.PHONY: install demo test lint bench compose-smoke clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null \
		|| $(if $(TORCH_INDEX),$(BIN)/python -m pip install -q --retries 1 --timeout 20 \
			"$(TORCH_SPEC)" --index-url $(TORCH_INDEX) \
		|| (echo "$(TORCH_INDEX) unreachable: torch from the default index"; false) \
		||) $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/autoresearch prepare --profile cpu
	$(BIN)/autoresearch run --profile cpu --tag $(TAG) --max-experiments $(EXPERIMENTS)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/overhead.py

# The compose stack on one machine without a GPU, three projects, checked end to end
# (docker/smoke.sh: its settings, e.g. SMOKE_LOCAL_BASE=1 to pull no image, come from the
# environment).
compose-smoke:
	bash docker/smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
