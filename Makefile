# The two commands a newcomer needs. Both set up everything first (scripts/bootstrap.sh).
STACK ?= aws-dev
PYTEST_ARGS ?=

.PHONY: preview test test-k8s k8s-binaries setup

## Offline preview of a stack (default aws-dev): what `pulumi up` would create, no cloud needed.
preview:
	./scripts/bootstrap.sh
	.venv/bin/python -m airflow_on_k8s.tools.preview $(STACK)

## The whole test suite, with the PostgreSQL/Redis binaries the tests start on their own.
test: k8s-binaries
	./scripts/bootstrap.sh --services
	.venv/bin/python -m pytest $(PYTEST_ARGS)

setup:
	./scripts/bootstrap.sh --services

## Upstream etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, KEDA and metrics-server for the control-plane tier
## (tests/k8s), built from their Go modules (hack/controlplane/) into a version-keyed cache outside the clone:
## the first build takes a while, later runs find them there.
k8s-binaries:
	./hack/controlplane/build.sh

## The control-plane tier alone: a real apiserver, controllers and scheduler (tests/k8s, and the autoscaler's
## end-to-end tests on it with real Airflow, PostgreSQL and Redis).
test-k8s: k8s-binaries
	./scripts/bootstrap.sh --services
	.venv/bin/python -m pytest -m k8s $(PYTEST_ARGS)
