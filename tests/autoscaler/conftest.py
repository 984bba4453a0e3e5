"""Fixtures for the worker autoscaler's tests. Services (PostgreSQL, Redis, Celery workers, an Airflow
scheduler) are real, started here on 127.0.0.1 and free ports, and stopped afterwards."""

from __future__ import annotations
