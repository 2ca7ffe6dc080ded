# One-command setup and checks. All targets are idempotent.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint main checkpoints

# Create the virtual environment and install hip with its pinned stack (about 8 min on 2 cores,
# most of it building torch-scatter from source).
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	# CPU wheel; GPU users: see README "Installing on a GPU machine" for the CUDA index URL.
	$(BIN)/pip install -q torch==2.13.0
	# fairchem-core 1.10.0 (last release with EquiformerV2) pins torch~=2.4 and numpy<2: install it
	# without its dependencies; pyproject.toml declares what its EquiformerV2 import chain needs.
	$(BIN)/pip install -q --no-deps fairchem-core==1.10.0
	# torch-scatter has no wheels for this torch: build against the installed torch.
	$(BIN)/python -c "import torch_scatter" 2>/dev/null || $(BIN)/pip install -q --no-build-isolation torch-scatter==2.1.2
	$(BIN)/pip install -q -e ".[dev,dft]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

# The main job on the embedded DFT data: train end to end briefly, then evaluate (Table 1 block).
main: install
	$(BIN)/python train.py experiment=embedded_demo

# Retrain the checkpoints shipped in ckpt/ (ckpt/README.md): the E-F backbone, then the HIP readout on
# it, then their held-out evaluations. Resumable: rerun after an interruption to continue each run.
SHIPPED := logs/shipped
checkpoints: install
	$(BIN)/python train.py experiment=backbone_ef_small ckpt_path=last hydra.run.dir=$(SHIPPED)/backbone_ef_small
	$(BIN)/python scripts/export_checkpoint.py $(SHIPPED)/backbone_ef_small/checkpoints ckpt/backbone_ef_small.ckpt --backbone-only
	$(BIN)/python train.py experiment=hip_small ckpt_path=last hydra.run.dir=$(SHIPPED)/hip_small
	$(BIN)/python scripts/export_checkpoint.py $(SHIPPED)/hip_small/checkpoints ckpt/hip_small.ckpt
	$(BIN)/python eval.py data=embedded hydra.run.dir=$(SHIPPED)/eval_embedded
	$(BIN)/python eval.py data=horm_sample hydra.run.dir=$(SHIPPED)/eval_horm_sample
