# unionterm: two commands on a fresh Debian 12 machine.
#   make demo   install what is missing, then run a complete simulated terminal
#   make test   install what is missing, then run the test suite
#   make bench  install what is missing, then measure (writes bench/results.json)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PKGS := pcscd libpcsclite-dev swig gcc vsmartcard-vpcd pcsc-tools mosquitto mosquitto-clients \
            fonts-wqy-zenhei fonts-unifont systemd openssl chromium
DEMO_OUT ?= out/demo

.PHONY: deps apt venv test demo bench clean

apt:
	@missing=$$(for p in $(APT_PKGS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	python3 -m venv --help >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (run as root, or install them with apt-get)"; exit 1; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

deps: apt venv

test: deps
	$(PY) -m pytest -q

demo: deps
	$(VENV)/bin/unionterm-sim demo --out $(DEMO_OUT)

bench: deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) out build *.egg-info
