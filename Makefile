# Two commands matter: `make local` runs the server, `make test` runs the tests.
# Both set up .venv first from constraints.txt, the one lock file the image, tests and CI share.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Test files spread over this many processes (pytest-xdist), each file whole in one of them (its
# module fixtures built once). Why: the suite is mostly one process's CPU at a time (it waits on
# servers it starts, gcloud and the fakes), ~34 min on a 2-CPU machine of the slower kind, over
# the 30 min CI allows. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: local test lock services clean

$(BIN)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

local: $(BIN)/.installed
	$(BIN)/mlflow-gcp local

services:
	@bash .ci/services

test: $(BIN)/.installed services
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# After changing dependencies in pyproject.toml: pip install them into .venv, then `make lock`.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v -e '^mlflow-gcp' -e '^-e' > constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
