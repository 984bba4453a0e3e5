"""Pulumi component resources that stand up Apache Airflow on EKS or GKE.

Import what you need in your own Pulumi program::

    from components.config import StackConfig
    from components.eks_cluster import EksCluster
"""
