# Every tier of the project's tests. `make test` is the README's test command and the only
# thing .ci/run calls. `make quick` is the fast tier for iteration (lint + unit, no guests).
SHELL := /bin/bash
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)
SANITY_BASE ?= build/sanity
SANITY_ROOT := $(abspath $(SANITY_BASE))/ansible_collections/mv6/transition
# Molecule scenarios run in this order; each builds and removes its own simulated site, and
# is stopped after molecule/NAME/timeout seconds (1500 where there is no such file).
SCENARIOS ?= $(shell cat molecule/ORDER 2>/dev/null)

.PHONY: setup test quick docs lint ruff ansible-lint shellcheck sanity unit integration integration-host integration-files molecule bench lab lab-down fleet-lab fleet-down clean

setup:
	bash scripts/setup.sh

# Every tier; the fleet scenario runs beside the others (scripts/test.sh says why).
test: setup
	bash scripts/test.sh

quick: lint unit

lint: ruff ansible-lint shellcheck

ruff:
	$(BIN)/ruff check plugins tests bench molecule scripts roles/hypervisor/files
	$(BIN)/ruff format --check plugins tests bench molecule scripts roles/hypervisor/files

# Every tracked shell script (setup.sh installs shellcheck); the shell in the roles' Jinja
# templates is not linted.
shellcheck:
	git ls-files -z -- '*.sh' .ci/run | xargs -0 -r shellcheck

ansible-lint:
	$(BIN)/ansible-lint --offline

unit:
	$(BIN)/pytest tests/unit

# The integration tests in two parts: those on the host's network, libvirt, guests and
# /dev/kvm (they must not run beside the Molecule scenarios), and those marked files_only
# (pyproject.toml), which scripts/test.sh runs beside the scenarios. `make integration` runs
# both, one after the other. At its bound timeout(1) sends SIGTERM, which the tests turn into
# a stop that tears their fixtures down (tests/integration/conftest.py); -k kills after that.
integration: integration-host integration-files

integration-host:
	timeout -k 240 3300 $(BIN)/pytest tests/integration -m "not files_only" --durations=25

integration-files:
	timeout -k 120 900 $(BIN)/pytest tests/integration -m files_only --durations=10

# ansible-test wants the collection at ansible_collections/NS/NAME, and reads every file of
# the tree: run it on a copy of the tracked files only, never on a tree holding a venv.
sanity:
	rm -rf $(SANITY_BASE) && mkdir -p $(SANITY_ROOT)
	git ls-files -z --cached --others --exclude-standard | rsync -a --from0 --files-from=- ./ $(SANITY_ROOT)/
	cd $(SANITY_ROOT) && git init -q && git add -A && \
	  timeout 1200 $(BIN)/ansible-test sanity --local --python 3.11 --requirements --color no

molecule:
	@for s in $(SCENARIOS); do \
	  echo "=== molecule scenario $$s"; start=$$SECONDS; \
	  limit=$$(cat molecule/$$s/timeout 2>/dev/null || echo 1500); \
	  timeout $$limit $(BIN)/molecule test -s $$s || exit 1; \
	  echo "=== molecule scenario $$s passed in $$((SECONDS - start)) s"; \
	done

# The reference site, static HTML in build/docs (docs/site/README.md), then looked at in
# headless Chromium (tests/docs): links, console, screenshots.
docs:
	timeout 600 bash scripts/docs.sh
	MV6_DOCS_REQUIRE_BROWSER=1 timeout 600 $(BIN)/pytest tests/docs

bench:
	$(BIN)/python bench/plan_bench.py
	$(BIN)/python bench/diagram_bench.py

lab: setup
	bash scripts/lab.sh up

lab-down:
	bash scripts/lab.sh down

# The fleet test site (docs/fleet.md): up, router from the plan, site.yml on site a.
fleet-lab: setup
	bash scripts/fleet.sh up
	mkdir -p /var/lib/mv6-fleet/plans
	$(BIN)/ansible-playbook -i inventories/fleet playbooks/plan.yml
	$(BIN)/python scripts/fleet_site.py router /var/lib/mv6-fleet/plans/site-a.yml a mv6f-rtr
	$(BIN)/ansible-playbook -i inventories/fleet playbooks/site.yml -f 3

fleet-down:
	bash scripts/fleet.sh down

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
