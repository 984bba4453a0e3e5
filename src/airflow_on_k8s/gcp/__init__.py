"""Google Cloud: GKE with its node pools, Workload Identity, GCS logs and Cloud SQL."""
