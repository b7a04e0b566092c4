# Thin wrapper over CMake. `make` builds the library (libwmat.a, libwmat.so)
# and the CLI into build/; `make test` builds the tests and runs the CTest
# suite with a passed / failed / skipped summary; `make bench` builds and runs
# the benchmarks; `make install PREFIX=...` installs the CLI, the libraries,
# include/wmat.h and wmat.pc; `make asan` builds and tests with sanitizers.
JOBS ?= $(shell nproc)
BUILD ?= build
PREFIX ?= /usr/local
CMAKE_FLAGS ?=

.PHONY: all test asan bench demo install clean deps

all:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j$(JOBS)

test: all
	cmake --build $(BUILD) -j$(JOBS) --target wmat_tests
	scripts/ctest-summary.sh $(BUILD) --output-on-failure -j1

asan:
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWMAT_SANITIZE=ON $(CMAKE_FLAGS)
	cmake --build build-asan -j$(JOBS) --target all wmat_tests
	ASAN_OPTIONS=detect_leaks=1 scripts/ctest-summary.sh build-asan --output-on-failure -j1

bench: all
	cmake --build $(BUILD) -j$(JOBS) --target wmat_benches
	scripts/run-benchmarks.sh $(BUILD)

demo: all
	scripts/demo.sh $(BUILD)

install: all
	cmake --install $(BUILD) --prefix $(PREFIX)

deps:
	scripts/setup-deps.sh

clean:
	rm -rf build build-asan
