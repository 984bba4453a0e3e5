"""Observability of worker scaling: Kubernetes-side scrape targets, the Grafana dashboard and alerts."""
