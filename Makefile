# Two entry points do all set-up on a fresh Debian 12 machine:
#   make demo   - the main job: the whole system on one machine
#   make test   - the whole test suite (unit + functional, real etcd + LVM,
#                 and the real-kernel tier: qemu guests, device-mapper)
PYTHON ?= python3
# prometheus: promtool and the server for the alert tests (their own
# Prometheus on 127.0.0.1; the package's service is disabled).
DEB_PACKAGES := lvm2 etcd-server etcd-client shellcheck prometheus
STAMP := .setup-done

.PHONY: setup setup-deb demo test unit functional bench pep8 genconfig clean

setup: setup-deb $(STAMP)

# Checked on every run, stamp or not: a package added to the list is
# installed on a machine set up before it was.
setup-deb:
	@if ! dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_PACKAGES) && \
		{ systemctl disable --now prometheus 2>/dev/null; \
		  rm -f /etc/systemd/system/multi-user.target.wants/prometheus.service; \
		  true; }; \
	fi

$(STAMP): requirements.txt test-requirements.txt extra-requirements.txt setup.cfg
	$(PYTHON) -m pip install -q -r requirements.txt -r test-requirements.txt \
		-r extra-requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .
	@touch $(STAMP)

demo: setup
	lvmcoord-demo

# Two pytest runs side by side (tests/streams.sh): the real-kernel tier
# (tests/realhost) and everything else; both mostly wait on session TTLs.
# The Nova tier (tests/nova) is not in it yet: make test-nova.
test: setup setup-realhost setup-nova
	LVMCOORD_NOVA_VENV=$(NOVA_VENV) PYTHON=$(PYTHON) tests/streams.sh

.PHONY: test-chaos
# The fixed-seed chaos run alone (tests/functional/test_chaos.py,
# doc/chaos.md); make test runs it too.
test-chaos: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider -m chaos tests/functional/test_chaos.py

unit: setup
	$(PYTHON) -m pytest -q tests/unit

functional: setup
	$(PYTHON) -m pytest -q tests/functional

.PHONY: chaos
# make chaos SEED=N DURATION=S: one chaos run (doc/chaos.md).
SEED ?= $(shell date +%s)
DURATION ?= 300
chaos: setup
	$(PYTHON) -m coordinator.sandbox.chaos --seed $(SEED) --duration $(DURATION)

bench: setup
	$(PYTHON) -m bench.run

pep8: setup
	ruff check coordinator driver tests bench lvmcoord_tempest_plugin

genconfig: setup
	oslo-config-generator --config-file etc/lvmcoord/lvmcoord-config-generator.conf

clean:
	rm -f $(STAMP) $(NOVA_STAMP)

# The real-kernel tier (tests/realhost, doc/realhost.md): qemu guests on
# Debian's stock kernel, real device-mapper, one shared LU. The kernel is
# fetched with `apt-get download` into /var/cache/lvmcoord-realhost.
# The iSCSI LU (scenario g): tgt's tgtd on this machine, open-iscsi and
# multipath-tools for the guests (they run this machine's binaries). The
# tier starts its own tgtd on 127.0.0.1; the package's service would
# listen on every address, so it is disabled (systemd hosts only).
REALHOST_PACKAGES := qemu-system-x86 busybox-static tgt open-iscsi \
	multipath-tools sg3-utils strace
.PHONY: setup-realhost test-realhost

setup-realhost: setup
	@if ! dpkg -s $(REALHOST_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			$(REALHOST_PACKAGES); \
	fi
	@if [ -d /run/systemd/system ]; then \
		systemctl disable --now tgt.service >/dev/null 2>&1 || true; \
	fi

test-realhost: setup-realhost
	LVMCOORD_REALHOST=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/realhost

# The Nova tier (tests/nova, doc/nova.md): Nova 34's own functional
# harness in its own virtualenv (Nova needs SQLAlchemy 2.0.x; its test
# dependencies are not declared by the wheel), this project installed
# into it (not editable) for the connector.
NOVA_VENV ?= /opt/lvmcoord-nova-venv
NOVA_STAMP := $(NOVA_VENV)/.lvmcoord-setup-done
NOVA_PACKAGES := nova==34.0.0 'SQLAlchemy<2.1' openstack-placement \
	oslotest testtools wsgi-intercept
.PHONY: setup-nova test-nova

setup-nova: setup $(NOVA_STAMP)

$(NOVA_STAMP): setup.cfg requirements.txt
	$(PYTHON) -m venv $(NOVA_VENV)
	$(NOVA_VENV)/bin/pip install -q $(NOVA_PACKAGES)
	$(NOVA_VENV)/bin/pip install -q --no-deps .
	@touch $(NOVA_STAMP)

test-nova: setup-nova
	LVMCOORD_NOVA_VENV=$(NOVA_VENV) $(PYTHON) -m pytest -q \
		-p no:cacheprovider tests/nova
