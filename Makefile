# `make demo` and `make test` each create .venv and install the package into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,tfds]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --workdir runs/demo

test: $(STAMP)
	XLA_FLAGS="--xla_force_host_platform_device_count=2" $(PY) -m pytest -n 2 -q tests

test-all: $(STAMP)
	XLA_FLAGS="--xla_force_host_platform_device_count=2" $(PY) -m pytest -n 2 -q -m "slow or not slow" tests

# reference_param_counts.py and reference_throughput.py need checkouts of the reference (--reference_dir) and
# sampler_quality.py a trained MNIST checkpoint (--workdir): run them by hand. train_step_case.py is a module.
bench: $(STAMP)
	for b in $(filter-out benchmarks/reference_param_counts.py benchmarks/reference_throughput.py benchmarks/train_step_case.py benchmarks/sampler_quality.py,$(wildcard benchmarks/*.py)); do \
	  echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
