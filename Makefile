# protonet: `make test` sets everything up and runs the test suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: deps test test-fast proto-check clean

# Python packages (torch==2.13.0 is the CPU oracle for the tests) and, where apt
# is available as root, protoc 3.21 for the schema staleness check and Debian's
# Fashion-MNIST (/usr/share/datasets/fashion-mnist) for the data tests and the demo.
APT_PACKAGES := protobuf-compiler dataset-fashion-mnist

deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    { ! command -v protoc >/dev/null 2>&1 || [ ! -d /usr/share/datasets/fashion-mnist ]; }; then \
		(apt-get update -qq && apt-get install -y -qq $(APT_PACKAGES)) >/dev/null 2>&1 || \
		echo "note: could not install $(APT_PACKAGES); the tests that need them will skip"; \
	fi
	$(PIP) install -q -e '.[test]'

test: deps
	$(PYTHON) -m pytest -q

# without the slow end-to-end tests
test-fast:
	$(PYTHON) -m pytest -q -m 'not slow'

proto-check:
	$(PYTHON) scripts/gen_proto.py --check

clean:
	rm -rf build dist *.egg-info .pytest_cache
