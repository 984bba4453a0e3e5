#!/usr/bin/env bash
# Builds the upstream binaries of the control-plane test tier from their Go modules.
#
# One wrapper module per upstream project lives next to this script (kubernetes/, etcd/, kwok/, keda/,
# metrics-server/, cluster-autoscaler/); its go.mod is the single source of truth for the version built. Each binary
# goes into a version-keyed cache outside the clone, so a fresh clone on the same machine reuses it:
#
#   ${AIRFLOW_ON_K8S_BIN_DIR:-$HOME/.cache/airflow-on-k8s/bin}/<name>-<version>/<binary>
#
# e.g. kubernetes-v1.34.4/kube-apiserver. A binary that already exists is not rebuilt (idempotent);
# FORCE=1 rebuilds. The wall time of every build is printed. Usage:
#
#   hack/controlplane/build.sh              # everything
#   hack/controlplane/build.sh kubernetes   # one or more of: kubernetes etcd kwok keda metrics-server helm
#   hack/controlplane/build.sh --print-dir  # print each component's cache dir (name=dir), build nothing
#
# Needs Go (>= the go line of the wrapper go.mod files) and the Go module proxy. Builds run one at a
# time (they are CPU-bound; running two on a small machine only slows both down).
set -euo pipefail

command -v go >/dev/null || { echo "build.sh: Go is needed to build the control-plane binaries (go.dev/doc/install)" >&2; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_root="${AIRFLOW_ON_K8S_BIN_DIR:-$HOME/.cache/airflow-on-k8s/bin}"
# cluster-autoscaler (k8s.io/autoscaler/cluster-autoscaler, -tags kwok) is wired below but has no wrapper
# module yet: the Go module proxy this project reaches refuses that module path (403), see the README.
all=(kubernetes etcd kwok keda metrics-server helm)

# module path of the upstream project, per wrapper module
declare -A upstream=(
  [kubernetes]=k8s.io/kubernetes
  [etcd]=go.etcd.io/etcd/server/v3
  [kwok]=sigs.k8s.io/kwok
  [keda]=github.com/kedacore/keda/v2
  [metrics-server]=sigs.k8s.io/metrics-server
  [cluster-autoscaler]=k8s.io/autoscaler/cluster-autoscaler
  [helm]=helm.sh/helm/v3
)

mod_field() { # <component> <go template on the upstream module>
  (cd "$here/$1" && go list -m -f "$2" "${upstream[$1]}")
}

version_of() { mod_field "$1" '{{.Version}}'; }

# Package path -> output binary name, per component.
targets() {
  case "$1" in
    kubernetes)
      echo "k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver"
      echo "k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager"
      echo "k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler"
      ;;
    etcd) echo "go.etcd.io/etcd/server/v3 etcd" ;;
    kwok) echo "sigs.k8s.io/kwok/cmd/kwok kwok" ;;
    keda)
      echo "github.com/kedacore/keda/v2/cmd/operator keda-operator"
      echo "github.com/kedacore/keda/v2/cmd/adapter keda-adapter"
      ;;
    metrics-server) echo "sigs.k8s.io/metrics-server/cmd/metrics-server metrics-server" ;;
    cluster-autoscaler) echo "k8s.io/autoscaler/cluster-autoscaler cluster-autoscaler" ;;
    helm) echo "helm.sh/helm/v3/cmd/helm helm" ;;
  esac
}

# The version variables upstream's hack/lib/version.sh sets (kube::version::ldflags).
kube_ldflags() {
  local version="$1" date="$2" major minor
  major="${version#v}"; major="${major%%.*}"
  minor="${version#v*.}"; minor="${minor%%.*}"
  local kv
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for kv in "gitVersion=$version" "gitMajor=$major" "gitMinor=$minor" "gitTreeState=clean" "buildDate=$date"; do
      printf -- "-X '%s.%s' " "$pkg" "$kv"
    done
  done
}

ldflags_for() { # <component> <version>
  local date
  date="$(mod_field "$1" '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}')"
  case "$1" in
    kubernetes) kube_ldflags "$2" "$date" ;;
    cluster-autoscaler)
      # CA vendors client-go/component-base at its own minor; /version of CA is not used by the tests.
      ;;
    etcd) printf -- "-X 'go.etcd.io/etcd/api/v3/version.GitSHA=module-%s' " "$2" ;;
    # KEDA's Makefile (GO_LDFLAGS)
    keda) printf -- "-X 'github.com/kedacore/keda/v2/version.Version=%s' -X 'github.com/kedacore/keda/v2/version.GitCommit=module-%s' " "$2" "$2" ;;
    # metrics-server's Makefile sets client-go's version variables (PKG:=k8s.io/client-go/pkg)
    # Helm's Makefile (LDFLAGS += -X helm.sh/helm/v3/internal/version.version=...)
    helm) printf -- "-X 'helm.sh/helm/v3/internal/version.version=%s' " "$2" ;;
    metrics-server)
      printf -- "-X 'k8s.io/client-go/pkg/version.gitVersion=%s' -X 'k8s.io/client-go/pkg/version.gitCommit=module-%s' -X 'k8s.io/client-go/pkg/version.buildDate=%s' " "$2" "$2" "$date" ;;
  esac
}

tags_for() {
  case "$1" in
    cluster-autoscaler) echo kwok ;;
    *) echo "" ;;
  esac
}

build_component() {
  local comp="$1" version dir pkg name out start end ldflags tags
  version="$(version_of "$comp")"
  dir="$bin_root/$comp-$version"
  mkdir -p "$dir"
  ldflags="-s -w $(ldflags_for "$comp" "$version")"
  tags="$(tags_for "$comp")"
  while read -r pkg name; do
    out="$dir/$name"
    if [[ -x "$out" && -z "${FORCE:-}" ]]; then
      echo "== $comp $version: $name present ($out)"
      continue
    fi
    echo "== $comp $version: building $name"
    start=$(date +%s.%N)
    (cd "$here/$comp" && CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
    end=$(date +%s.%N)
    printf '== %s %s: built %s in %.1f s\n' "$comp" "$version" "$name" "$(awk "BEGIN{print $end - $start}")"
  done < <(targets "$comp")
  if [[ "$comp" == kwok || "$comp" == keda || "$comp" == metrics-server ]]; then
    # The tests read files of these modules from the module cache (kwok's stage YAMLs, KEDA's CRDs and RBAC,
    # metrics-server's RBAC): make sure the module is there even when the binary came from elsewhere (e.g. a CI
    # cache of the bin dir).
    (cd "$here/$comp" && go mod download "${upstream[$comp]}")
  fi
}

if [[ "${1:-}" == "--print-dir" ]]; then
  for comp in "${all[@]}"; do echo "$comp=$bin_root/$comp-$(version_of "$comp")"; done
  exit 0
fi

comps=("$@")
[[ ${#comps[@]} -eq 0 ]] && comps=("${all[@]}")
total_start=$(date +%s)
for comp in "${comps[@]}"; do
  [[ -d "$here/$comp" ]] || { echo "unknown component: $comp (one of: ${all[*]})" >&2; exit 2; }
  build_component "$comp"
done
echo "== all done in $(( $(date +%s) - total_start )) s (binaries under $bin_root)"
