# Two commands matter: `make local` runs the server, `make test` runs the tests.
# Both set up .venv first from constraints.txt, the one lock file the image, tests and CI share.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# After changing dependencies in pyproject.toml: pip install them into .venv, then `make lock`.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v -e '^mlflow-gcp' -e '^-e' > constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
