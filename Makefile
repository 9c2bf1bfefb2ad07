# MusicFS: `make run` mounts a demo library, `make test` runs every test. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := fuse3 libfuse3-dev pkg-config flac ffmpeg openssh-server
BENCH_DEBS := rclone
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO := demo

.PHONY: setup debs run test test-plain test-failpoints bench clean

setup: debs $(VENV)/.installed

# Installs only the Debian packages that are missing, so a second run costs a dpkg query.
debs:
	@missing=$$(for p in $(DEBS) $(EXTRA_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

run: setup
	@[ -d $(DEMO)/library ] || $(BIN)/musicfs demo $(DEMO)/library --tracks 24 --big-file-mb 50
	@mkdir -p $(DEMO)/mnt
	@echo "Mounting $(DEMO)/library on $(DEMO)/mnt (Ctrl-C unmounts). In another terminal: ls -R $(DEMO)/mnt"
	$(BIN)/musicfs mount $(DEMO)/library $(DEMO)/mnt

test: setup
	$(MAKE) test-plain test-failpoints

test-plain:
	$(BIN)/pytest -n 2 -q

test-failpoints:
	$(BIN)/pytest --failpoints -p no:xdist -q

bench:
	$(MAKE) setup EXTRA_DEBS="$(BENCH_DEBS)"
	$(BIN)/python bench/run_bench.py
	$(BIN)/python bench/large_library.py

clean:
	rm -rf $(VENV) $(DEMO) *.egg-info
