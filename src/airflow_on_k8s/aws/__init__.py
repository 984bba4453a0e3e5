"""AWS: EKS with its node groups, the Cluster Autoscaler, IRSA, S3 logs and RDS."""
