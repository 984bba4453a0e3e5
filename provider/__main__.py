"""The plugin's entry point: the Pulumi engine runs this to serve the airflow-on-k8s components."""

from airflow_on_k8s.provider import serve

if __name__ == "__main__":
    serve()
