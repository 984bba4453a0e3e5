"""An existing cluster reached through a kubeconfig (kind, k3d, minikube, ...)."""
