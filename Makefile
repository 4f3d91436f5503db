# Thin wrapper over CMake. `make test` and `make demo` work on a fresh machine.
BUILD   ?= build
JOBS    ?= $(shell nproc)
CMAKE_FLAGS ?=
DEB_PKGS := cmake g++ make libeigen3-dev libcli11-dev doctest-dev nlohmann-json3-dev zlib1g-dev \
            libpng-dev libblis-serial-dev libopenmpi-dev openmpi-bin python3-torch python3-numpy python3-sklearn python3-matplotlib libopenblas0-pthread

.PHONY: deps build test test-portable bench sanitize demo data clean

# Idempotent: installs only the Debian packages that are missing.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "[deps] installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	else echo "[deps] all Debian packages present"; fi

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	OMP_NUM_THREADS=2 ./$(BUILD)/vmoer_tests

bench: build
	./scripts/bench.sh $(BUILD)

# The whole unit suite on a portable build (-march=x86-64-v3: AVX2, no
# AVX-512; no CUDA), so a test whose expectation holds only with the build
# machine's instruction set fails on any machine, AVX-512 ones included.
test-portable: deps
	cmake -S . -B build-portable -DCMAKE_BUILD_TYPE=Release -DVMOER_NATIVE=OFF -DVMOER_CUDA=OFF >/dev/null
	cmake --build build-portable -j $(JOBS) --target vmoer vmoer_tests
	OMP_NUM_THREADS=2 ./build-portable/vmoer_tests

# The whole unit suite (and the vmoer binary its pipeline tests run) under
# AddressSanitizer + UndefinedBehaviorSanitizer; benchmarks are not built.
sanitize: deps
	cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVMOER_SANITIZE=ON -DVMOER_CUDA=OFF >/dev/null
	cmake --build build-sanitize -j $(JOBS) --target vmoer vmoer_tests
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OMP_NUM_THREADS=2 ./build-sanitize/vmoer_tests

data: build
	./$(BUILD)/vmoer data fetch

demo: build
	./$(BUILD)/vmoer data fetch
	./scripts/demo.sh $(BUILD)

clean:
	rm -rf $(BUILD) build-portable build-sanitize build-fuzz build-valgrind build-gpu-bundle gpu-bundle gpu-kit

# Reliability (docs/RELIABILITY.md): libFuzzer targets (clang), FUZZ_SECONDS each;
# valgrind memcheck on short training runs (its own non-AVX-512 build).
FUZZ_SECONDS ?= 60
FUZZ_PKGS := clang libclang-rt-14-dev
.PHONY: fuzz fuzz-ci fuzz-deps valgrind gpu-bundle gpu-rehearse
fuzz-deps:
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(FUZZ_PKGS)"
fuzz: fuzz-deps
	./scripts/fuzz.sh $(FUZZ_SECONDS)
# CI: the five parser targets (each links only its parser); the checkpoint
# target rebuilds the whole library with clang and runs in `make fuzz` only.
fuzz-ci: fuzz-deps
	./scripts/fuzz.sh $(FUZZ_SECONDS) safetensors idx wordnet dict metrics_csv

valgrind: deps
	@$(MAKE) --no-print-directory deps DEB_PKGS=valgrind
	./scripts/valgrind.sh build-valgrind

# The GPU kit (docs/PERF.md "GPU"): a portable CUDA build with its libraries in
# gpu-bundle/ for a bare GPU machine, and a rehearsal of it in a bare Debian
# root (debootstrap) on this machine. Not part of CI (about 10 minutes).
gpu-bundle: deps
	@$(MAKE) --no-print-directory deps DEB_PKGS=patchelf
	./scripts/gpu_bundle.sh gpu-bundle
gpu-rehearse: gpu-bundle
	@$(MAKE) --no-print-directory deps DEB_PKGS=debootstrap
	./scripts/gpu_rehearse.sh gpu-kit/bundle.tar.gz
