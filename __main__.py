"""Composition root: read the stack's config, build the cluster, install what runs on it."""

import pulumi

from components.clusters import create_cluster
from components.config import load_stack_config

config = load_stack_config()
cluster = create_cluster(config)

pulumi.export("cloud", config.cloud)
pulumi.export("clusterName", cluster.cluster_name)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("taskPool", cluster.task_pool.as_dict())
