# The two commands a newcomer needs. Both set up everything first (scripts/bootstrap.sh).
STACK ?= aws-dev
PYTEST_ARGS ?=

.PHONY: preview test setup

## Offline preview of a stack (default aws-dev): what `pulumi up` would create, no cloud needed.
preview:
	./scripts/bootstrap.sh
	.venv/bin/python -m airflow_on_k8s.tools.preview $(STACK)

## The whole test suite, with the PostgreSQL/Redis binaries the tests start on their own.
test:
	./scripts/bootstrap.sh --services
	.venv/bin/python -m pytest $(PYTEST_ARGS)

setup:
	./scripts/bootstrap.sh --services
