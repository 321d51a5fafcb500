# internvl-foodie: every command a user runs. `make help` lists them.
# PROFILE is chosen from whether a CUDA GPU is visible (override: make test PROFILE=cpu).
PROFILE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(PROFILE)
# Embedded default unless MODEL / DATA point at the real InternVL2-2B checkpoint / FoodieQA folder.
# TRAIN_DATA: train on this (e.g. your photos, tools/photos_to_foodieqa.py) and evaluate on all of DATA.
MODEL   ?=
DATA    ?=
TRAIN_DATA ?=
ACCEPT_FOODIEQA_TERMS ?=
PYTEST_ARGS ?=

.PHONY: help venv quickstart test test-fast train convert gpu-profile-check clean-work

help:
	@echo "make quickstart  - build the embedded tiny model + synthetic FoodieQA and run the whole course on them"
	@echo "                   (real job: make quickstart MODEL=/path/InternVL2-2B TRAIN_DATA=/path/my-photos DATA=/path/FoodieQA)"
	@echo "make test        - run the test suite (creates the environment, installs chromium + CJK fonts when missing)"
	@echo "make train       - xtuner train with a clear failure message (see tools/train.py --help)"
	@echo "make convert     - merge the newest checkpoint into an official InternVL2 folder, verified (OUT=work/merged)"
	@echo "make venv        - create $(VENV) for PROFILE=cpu|gpu (now: $(PROFILE))"

venv: $(STAMP)

# Installs the project with the torch pair of the profile (pins live in pyproject.toml only).
# DS_BUILD_OPS=0: DeepSpeed installs without compiling its ops (they are built JIT on GPU when used).
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q $$(python3 -c "import tomllib;print(' '.join(d for d in tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['$(PROFILE)'] if d.startswith('torch')))")
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[$(PROFILE),test]"
	@# lmdeploy (gpu profile) pulls in mmengine-lite, which writes the same `mmengine` package: make XTuner's mmengine win.
	@if [ "$(PROFILE)" = gpu ]; then $(PY) -m pip install -q --no-deps --force-reinstall $$(python3 -c "import tomllib;print(' '.join(d for d in tomllib.load(open('pyproject.toml','rb'))['project']['dependencies'] if d.startswith('mmengine')))"); fi
	@# Pins that override a broken transitive pin ([tool.foodie] overrides in pyproject.toml).
	$(PY) -m pip install -q --no-deps $$(python3 -c "import tomllib;print(' '.join(tomllib.load(open('pyproject.toml','rb'))['tool']['foodie']['overrides']))")
	@# The embedded tiny model's reading pre-training (~5 CPU minutes, once; cached, foodie/tiny_reader.py) is set-up.
	$(PY) -c "from foodie.tiny_model import ensure_embedded_default; ensure_embedded_default()"
	@rm -f $(VENV)/.installed-*
	touch $@

quickstart: $(STAMP)
	$(PY) tools/quickstart.py $(if $(MODEL),--model $(MODEL)) $(if $(DATA),--data-root $(DATA)) \
		$(if $(TRAIN_DATA),--train-data $(TRAIN_DATA)) $(if $(ACCEPT_FOODIEQA_TERMS),--accept-foodieqa-terms) $(QUICKSTART_ARGS)

# The browser tests need Debian's chromium and CJK fonts: installed here when missing and root, else one command shown.
test: $(STAMP)
	@sh tools/test_system_deps.sh
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

train: $(STAMP)
	$(PY) tools/train.py $(if $(CONFIG),--config $(CONFIG)) $(if $(RESUME),--resume) $(TRAIN_ARGS)

# CONFIG as for train; CKPT=latest (newest complete checkpoint) or an iter_N.pth; CONVERT_ARGS e.g. --force
convert: $(STAMP)
	$(PY) tools/convert_to_official.py $(or $(CONFIG),xtuner_configs/internvl_v2_tiny_lora_cpu.py) $(or $(CKPT),latest) $(or $(OUT),work/merged) $(CONVERT_ARGS)

# Resolver dry run of the gpu profile: catches a pin that no longer resolves, downloads no torch.
gpu-profile-check: $(STAMP)
	$(PY) -m pip install --dry-run --ignore-installed --quiet --report - ".[gpu]" > /tmp/foodie-gpu-resolve.json
	$(PY) -c "import json;r=json.load(open('/tmp/foodie-gpu-resolve.json'));v={i['metadata']['name'].lower():i['metadata']['version'] for i in r['install']};print('gpu profile resolves:',{k:v[k] for k in ('torch','lmdeploy','transformers','xtuner','deepspeed','gradio','peft','numpy') if k in v})"

clean-work:
	rm -rf work
