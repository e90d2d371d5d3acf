# realizefs: `make run` mounts the sample config, `make test` runs every test.
# Both start with `make setup`, which installs what is missing (Debian packages,
# then a virtualenv in .venv/) and does nothing the second time.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CONFIG ?= etc/realizefs.toml
DEMO := /tmp/realizefs-demo
# fuse3: fusermount3 and the kernel module's helpers; libfuse3-dev, pkg-config,
# gcc, python3-dev: to build pyfuse3; attr: setfattr/getfattr; acl:
# setfacl/getfacl (the ACL tests); systemd:
# systemd-analyze for the unit test; rsync, b3sum: baselines in bench/;
# strace: to see the daemon's fsyncs reach the backing files in a test;
# stress-ng, fio: bench/stress.sh; syncthing, iproute2 (ip): bench/sync_bench.py
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr acl systemd rsync b3sum strace stress-ng \
	fio syncthing iproute2

.PHONY: setup system-packages run test demo lint bench bench-sync clean install

setup: system-packages $(STAMP)

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root (or install: $$missing)"; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

run: setup
	mkdir -p $(DEMO)/real/documents $(DEMO)/real/photos
	exec $(VENV)/bin/realizefs --config $(CONFIG)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Two peers on this machine sharing an arena: see what it prints; Ctrl-C stops both.
demo: setup
	$(VENV)/bin/python demo/two_peers.py

lint: setup
	$(VENV)/bin/ruff check realizefs tests bench demo
	$(VENV)/bin/ruff format --check realizefs tests bench demo
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup
	$(VENV)/bin/python bench/mount_bench.py

# realizefs, rsync and Syncthing syncing the same work between two local peers:
# one table. A quick run: make bench-sync SYNC_BENCH_ARGS='--size-mib 64 --files 1000'
bench-sync: setup
	$(VENV)/bin/python bench/sync_bench.py $(SYNC_BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# A system-wide install for systemd: a virtualenv in /opt/realizefs, the
# command in /usr/local/bin, the unit, and the sample config if none exists.
install: system-packages
	$(PYTHON) -m venv /opt/realizefs
	/opt/realizefs/bin/pip install -q .
	ln -sf /opt/realizefs/bin/realizefs /usr/local/bin/realizefs
	install -m 644 systemd/realizefs.service /etc/systemd/system/realizefs.service
	[ -e /etc/realizefs.toml ] || install -m 644 etc/realizefs.toml /etc/realizefs.toml
	-systemctl daemon-reload
