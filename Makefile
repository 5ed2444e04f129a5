# Shortcuts; README's two set-up commands are the reference for a fresh machine.
PY ?= .venv/bin/python

.PHONY: setup test fuzz bench bench-quick docs

setup:
	python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[test]'

test:
	$(PY) -m pytest -q

# The property tests with many examples (CI runs 25 of each, and 300 traces against trace_processor).
fuzz:
	RBLN_PERFETTO_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/test_properties.py tests/test_differential_tp.py \
		tests/test_table_writer_properties.py

# Every benchmark, one table, JSON under bench/results/.
bench:
	$(PY) -m bench

bench-quick:
	$(PY) -m bench --quick

# Every example output in README.md and docs/ rewritten from a real run (tests/test_docs.py checks their shape).
docs:
	OMP_NUM_THREADS=1 $(PY) docs/generate.py
