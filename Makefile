# protonet. On a fresh machine:  `make demo` trains LeNet end to end; `make test` runs the tests.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

# protoc 3.21 (the schema staleness check) and Debian's Fashion-MNIST
# (/usr/share/datasets/fashion-mnist: the demo's data and the data tests).
APT_PACKAGES := protobuf-compiler dataset-fashion-mnist

.PHONY: apt-deps deps demo-deps demo test test-fast bench proto-check clean

apt-deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    { ! command -v protoc >/dev/null 2>&1 || [ ! -d /usr/share/datasets/fashion-mnist ]; }; then \
		(apt-get update -qq && apt-get install -y -qq $(APT_PACKAGES)) >/dev/null 2>&1 || \
		echo "note: could not install $(APT_PACKAGES); the tests that need them will skip"; \
	fi

# the test extras: PyTorch 2.13.0 CPU and OpenCV (numeric oracles), lmdb, h5py, Pillow
deps: apt-deps
	$(PIP) install -q -e '.[test]'

demo-deps: apt-deps
	$(PIP) install -q -e '.[data,progress,plot]'

# Caffe's MNIST example on Fashion-MNIST: convert to LMDB, train 10000 iterations, plot.
demo: demo-deps
	protonet data fashion-mnist
	protonet solve models/lenet/lenet_solver.prototxt --log lenet.log
	protonet plot lenet.log -o lenet.png

test: deps
	$(PYTHON) -m pytest -q

# without the slow end-to-end tests
test-fast:
	$(PYTHON) -m pytest -q -m 'not slow'

bench:
	$(PYTHON) -m bench

proto-check:
	$(PYTHON) scripts/gen_proto.py --check

clean:
	rm -rf build dist *.egg-info .pytest_cache
