# The two set-up commands of the README: `make demo` and `make test`. Both install what is missing
# (Debian packages, a virtualenv, the package) and then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Runtime: fuse3 (fusermount3 for lazyfs's umount), busybox-static (base image), zstd/tar (layers by hand).
# Interop peers in tests: podman, skopeo, umoci, buildah, runc, containerd, stargz-snapshotter (ctr-remote),
# docker-registry (the CNCF distribution registry).
# debootstrap makes a Debian base; python3-venv for the virtualenv; iproute2 and util-linux (nsenter)
# for the shaped link of the demo and the benchmarks; Go and the stargz library build the
# stargz-snapshotter peer of the benchmarks (benchmarks/peers/stargz); containerd's .proto files make the
# stubs of `lazyctr snapshotter` (lazyfs/snapshotter/api.py), generated at install.
# containernetworking-plugins (bridge, host-local, portmap, firewall) and iptables, which they exec, make
# `run`'s bridge networks and published ports (runtime/network/).
APT_PACKAGES := python3 python3-venv python3-dev gcc fuse3 libseccomp2 busybox-static zstd tar \
	podman skopeo umoci buildah runc containerd stargz-snapshotter debootstrap docker-registry \
	iproute2 util-linux golang-go golang-github-containerd-stargz-snapshotter-dev golang-github-containerd-containerd-dev
# haproxy: the load balancer in front of registry replicas (registry/balancer.py, tests/registry/test_replicas.py).
APT_PACKAGES += haproxy
APT_PACKAGES += containernetworking-plugins iptables
# `lazyctr bench vm` runs its image as a VM too: qemu-system-x86 (QEMU), linux-image-amd64 (the guest's
# kernel and its virtio/ext4 modules, from /boot and /lib/modules) and fio (copied into the image).
APT_PACKAGES += qemu-system-x86 linux-image-amd64 fio
# `lazyctr bench storage`: fio runs inside the containers (the host's, copied into the image) and on the
# host; btrfs-progs makes the btrfs file system of the btrfs driver's runs.
APT_PACKAGES += btrfs-progs
DEMO_ROOT ?= $(CURDIR)/.cache/demo-root
PYTEST_ARGS ?=

.PHONY: demo test deps apt lint bench clean

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml | apt
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	$(PY) -m lazyfs.snapshotter.api
	@touch $@

# Compiled bytecode up to date: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise
# recompile every module on every start, a third of the time `lazyctr run` takes.
deps: apt $(VENV)/.installed
	@$(PY) -m compileall -q storage builder registry lazyfs runtime lazyctr >/dev/null

demo: deps
	@mkdir -p $(DEMO_ROOT) .cache
	$(PY) -m benchmarks.demo --root $(DEMO_ROOT)

test: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy storage builder registry lazyfs runtime lazyctr benchmarks
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy storage builder registry lazyfs runtime lazyctr benchmarks

bench: deps
	$(PY) -m benchmarks.codec
	$(PY) -m benchmarks.startup --runs 10
	$(PY) -m benchmarks.registry --quick
	$(PY) -m benchmarks.build --runs 3
	$(PY) -m benchmarks.lazy --runs 1
	$(VENV)/bin/lazyctr bench hello --images quick --drivers overlay,lazy,lazy+profile --runs 1 --peers podman \
		--out .cache/bench/hello-quick
	$(VENV)/bin/lazyctr bench storage --containers 1,4 --runs 1 --file-mb 64 --small-files 2000 \
		--out .cache/bench/storage-quick

clean:
	rm -rf $(VENV) .cache *.egg-info
