"""The components other Pulumi languages get (through the component provider, airflow_on_k8s/provider.py), with
plain-data inputs and outputs: `EksCluster` and `GkeCluster` build a cluster, `AirflowOnCluster` installs the
add-ons and Airflow on any cluster given its kubeconfig and task-pool selector. Thin adapters over the Python
components, which take each other as objects and so cannot cross the language boundary; a Python program can use
either. Their settings are the stack config's keys (`settings.py`, generated from airflow_on_k8s/config.py).
"""
