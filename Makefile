# fedpers: the two set-up commands are `make demo` and `make test`.
BUILD_DIR ?= build
FEDPERS   := $(BUILD_DIR)/cli/fedpers

.PHONY: all deps configure build test demo bench clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja: CMakeLists.txt | deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $$(nproc)

test: build
	ctest --test-dir $(BUILD_DIR) -j 2 --output-on-failure

# The main job: pretrains the tiny base model on this machine's Debian
# changelogs if runs/demo/base holds none (users that do not federate only;
# an interrupted pretraining resumes), then simulates 20 maintainers with
# every method and prints the results table and the plots' paths.
demo: build
	$(FEDPERS) simulate --config configs/demo.json

bench: build
	$(FEDPERS) bench train --rounds 3

clean:
	rm -rf $(BUILD_DIR)
