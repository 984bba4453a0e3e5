"""Cloud-agnostic cluster add-ons: metrics-server and KEDA."""
