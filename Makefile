# Set-up, demo and tests. `make demo` and `make test` each set up .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch (this pin is the one the project is tested with); override for your own,
# e.g. `make TORCH=torch demo` for a CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.fffconvert-installed

.PHONY: setup demo test bench clean

$(STAMP): setup.py pyproject.toml cext/_cpu.pyx cext/fff_simd.h
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" cython setuptools wheel
	$(BIN)/pip install -q --no-build-isolation -e ".[test,demo,glue]"
	touch $@

setup: $(STAMP)

# Convert the embedded all-MiniLM-L6-v2 offline with the fast CPU setting (the default's end-to-end
# distillation takes hours on 2 cores: README), measure it against the original, then use it.
demo: $(STAMP)
	$(BIN)/fffconvert --depth 8 --calib-tokens 32768 --steps 100 --e2e-steps 150 --e2e-batch-size 32 --output out/minilm-fff --overwrite
	$(BIN)/fffconvert eval out/minilm-fff --max-texts 500
	$(BIN)/python examples/use_converted.py out/minilm-fff

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/fffconvert bench

clean:
	rm -rf build out *.egg-info fffconvert/*.so cext/_cpu.c cext/_cpu.cpp
