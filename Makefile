# Both targets do all set-up on a fresh clone: a venv in .venv, the project installed into it.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS := -c constraints.txt

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/resnetlab demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo runs
