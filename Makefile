# Thin wrapper over CMake. `make` builds Release into build/, `make test`
# runs the CTest suite, `make asan` builds and tests with sanitizers.
JOBS ?= $(shell nproc)
BUILD ?= build
CMAKE_FLAGS ?=

.PHONY: all test asan bench demo clean deps

all:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j$(JOBS)

test: all
	cd $(BUILD) && ctest --output-on-failure -j1

asan:
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWMAT_SANITIZE=ON $(CMAKE_FLAGS)
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j1

bench: all
	scripts/run-benchmarks.sh $(BUILD)

demo: all
	scripts/demo.sh $(BUILD)

deps:
	scripts/setup-deps.sh

clean:
	rm -rf build build-asan
