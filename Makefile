# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch: pip takes it from the local wheel cache when present (a plain `torch` would pull CUDA).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# What KenLM's Python module builds against (Debian package names); a fresh machine may need `apt-get update` first.
KENLM_BUILD_DEPS := libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev cmake

.PHONY: setup test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)" || $(PIP) install -q --index-url https://download.pytorch.org/whl/cpu "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[test]'
	# llama.cpp for the GGUF parity tests: built from source (minutes); if the build fails those tests skip.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q -e '.[llamacpp]' || echo "warning: llama-cpp-python did not build; the llama.cpp parity tests will skip"
	# KenLM's query module for the CCNet LM parity tests: built from source against Boost; if it fails they skip.
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { dpkg -s libboost-thread-dev >/dev/null 2>&1 || \
		{ apt-get install -y -q $(KENLM_BUILD_DEPS) >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q $(KENLM_BUILD_DEPS) >/dev/null 2>&1; }; }; }; }; \
		$(PIP) install -q -e '.[kenlm]' || echo "warning: kenlm did not build; the KenLM parity tests will skip"
	# bubblewrap isolates the generated code of HumanEval/MBPP (eval/sandbox.py); without it those tasks refuse
	# in one line unless --unsafe-exec is given.
	command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }; }; } || \
		echo "warning: bubblewrap is not installed; HumanEval/MBPP will refuse to run generated code (see eval/sandbox.py)"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup  # the built-in corpus flow (src/llamaforge/flows/demo.toml), then samples
	$(PY) -m llamaforge demo --out runs/demo

clean:
	rm -rf $(VENV) runs build *.egg-info
