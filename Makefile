# The two commands of the README's quick start: `make demo` and `make test`.
# Both install what they need first (scripts/setup.sh, idempotent; needs root).
.PHONY: setup demo test unit clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/qspan-lab demo

# Everything, then the pure-logic tests again on the pure-Python correlator (the fallback
# wherever the compiled one is not built: qspan/compiled.py).
test: setup
	.venv/bin/python -m pytest -v -rfE tests
	QSPAN_PURE=1 .venv/bin/python -m pytest -q -rfE tests/unit

# Pure-logic tests only: no QEMU, no bpftrace, no docker-compose, no root (tests/unit/;
# conftest.py fails a unit test that asks for tracing). Same set as -m "not e2e".
unit:
	.venv/bin/python -m pytest -v tests/unit

clean:
	rm -rf build .venv test-output
