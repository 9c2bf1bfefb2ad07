# MusicFS: `make run` mounts a demo library, `make test` runs every test. Both set up what they need:
# `make run` only what the daemon and `musicfs demo` need (the `demo` extra), `make test` the test tools too.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := fuse3 libfuse3-dev pkg-config openssh-client
TEST_DEBS := flac ffmpeg openssh-server e2fsprogs
# bench/media_scan.py runs real media scanners (mediainfo, ffprobe, mpd + mpc, beets) and strace
BENCH_DEBS := rclone mediainfo mpd mpc beets strace ffmpeg
MEDIA_SCAN_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO := demo

.PHONY: setup setup-test debs test-debs run test test-plain test-failpoints bench mutate clean

setup: debs $(VENV)/.installed-run

setup-test: test-debs $(VENV)/.installed-test

# Installs only the Debian packages that are missing, so a second run costs a dpkg query.
define install_debs
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

debs:
	$(call install_debs,$(DEBS) $(EXTRA_DEBS))

test-debs:
	$(call install_debs,$(DEBS) $(TEST_DEBS) $(EXTRA_DEBS))

$(VENV)/.installed-run: pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[demo]'
	touch $@

# the test extra includes the demo one: a test venv serves `make run` as well
$(VENV)/.installed-test: pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: setup
	@[ -d $(DEMO)/library ] || $(BIN)/musicfs demo $(DEMO)/library --tracks 24 --big-file-mb 50
	@mkdir -p $(DEMO)/mnt
	@echo "Mounting $(DEMO)/library on $(DEMO)/mnt (Ctrl-C unmounts). In another terminal: ls -R $(DEMO)/mnt"
	$(BIN)/musicfs mount $(DEMO)/library $(DEMO)/mnt

test: setup-test
	$(MAKE) test-plain test-failpoints

test-plain:
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 -q

test-failpoints:
	$(BIN)/pytest --failpoints -p no:xdist -q

bench:
	$(MAKE) setup-test EXTRA_DEBS="$(BENCH_DEBS)"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/read_path.py
	$(BIN)/python bench/large_library.py
	$(BIN)/python bench/remote_bench.py
	$(BIN)/python bench/media_scan.py $(MEDIA_SCAN_ARGS)

# Mutation testing (bench/mutate.py, cosmic-ray) in a clone of HEAD: cosmic-ray rewrites the module it mutates
# in place, so the working tree is never touched. Writes its report into docs/mutation.md. Not part of CI.
MUTATE_ARGS ?=
mutate:
	$(MAKE) setup-test
	$(BIN)/pip install -q --disable-pip-version-check -e '.[mutate]'
	rm -rf .mutate-clone && git clone -q . .mutate-clone
	cd .mutate-clone && $(abspath $(BIN))/python bench/mutate.py $(MUTATE_ARGS) --out $(abspath docs/mutation.md) \
		--results $(abspath bench/mutation-results.json)
	rm -rf .mutate-clone

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info .mutate-clone
