# fedpers: the two set-up commands are `make demo` and `make test`.
BUILD_DIR ?= build
FEDPERS   := $(BUILD_DIR)/cli/fedpers
DEMO_DIR  ?= runs/demo
DEMO_CORPUS ?= debian-changelogs
DEMO_STEPS ?= 600

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

# Pretrains the tiny base model on this machine's Debian changelogs (cached
# in $(DEMO_DIR)/base: a finished run is reused, an interrupted one resumes),
# then fine-tunes LoRA adapters for one maintainer kept out of pretraining.
demo: build
	@user=$$($(FEDPERS) data users --data $(DEMO_CORPUS) --json | python3 -c 'import json,sys; u=json.load(sys.stdin)["users"]; print(u[min(1, len(u)-1)]["user_id"])'); \
	echo "demo: pretraining on $(DEMO_CORPUS) without $$user, then fine-tuning for $$user"; \
	$(FEDPERS) pretrain --corpus $(DEMO_CORPUS) --config tiny --out $(DEMO_DIR)/base --steps $(DEMO_STEPS) \
	  --exclude-user "$$user" && \
	$(FEDPERS) finetune --base $(DEMO_DIR)/base --data $(DEMO_CORPUS) --user "$$user" \
	  --out $(DEMO_DIR)/finetune --steps 150

bench: build
	$(FEDPERS) bench train --rounds 3

clean:
	rm -rf $(BUILD_DIR)
