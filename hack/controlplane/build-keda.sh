#!/usr/bin/env bash
# Builds KEDA (operator + external-metrics API server) and metrics-server from their Go modules, for the
# real-control-plane benchmark of issue 12. Same layout and rules as build.sh next to it (kept separate so the two
# branches merge cleanly; fold it into build.sh's component table when convenient):
#
#   ${AIRFLOW_ON_K8S_BIN_DIR:-$HOME/.cache/airflow-on-k8s/bin}/<name>-<version>/<binary>
#
# e.g. keda-v2.20.2/keda-operator, keda-v2.20.2/keda-adapter, metrics-server-v0.8.0/metrics-server.
# The wrapper module's go.mod (keda/, metrics-server/) is the single source of truth for the version.
# A binary that exists is not rebuilt; FORCE=1 rebuilds. Builds run one at a time. Usage:
#
#   hack/controlplane/build-keda.sh                  # keda and metrics-server
#   hack/controlplane/build-keda.sh keda             # one of: keda metrics-server
#   hack/controlplane/build-keda.sh --print-dir
set -euo pipefail

command -v go >/dev/null || { echo "build-keda.sh: Go is needed (go.dev/doc/install)" >&2; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_root="${AIRFLOW_ON_K8S_BIN_DIR:-$HOME/.cache/airflow-on-k8s/bin}"
all=(keda metrics-server)

declare -A upstream=(
  [keda]=github.com/kedacore/keda/v2
  [metrics-server]=sigs.k8s.io/metrics-server
)

mod_field() { (cd "$here/$1" && go list -m -f "$2" "${upstream[$1]}"); }
version_of() { mod_field "$1" '{{.Version}}'; }

targets() {
  case "$1" in
    keda)
      echo "github.com/kedacore/keda/v2/cmd/operator keda-operator"
      echo "github.com/kedacore/keda/v2/cmd/adapter keda-adapter"
      ;;
    metrics-server) echo "sigs.k8s.io/metrics-server/cmd/metrics-server metrics-server" ;;
  esac
}

# The version variables of each upstream Makefile.
ldflags_for() { # <component> <version>
  local date
  date="$(mod_field "$1" '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}')"
  case "$1" in
    keda) printf -- "-X 'github.com/kedacore/keda/v2/version.Version=%s' -X 'github.com/kedacore/keda/v2/version.GitCommit=module-%s' " "$2" "$2" ;;
    metrics-server)
      # metrics-server's Makefile sets client-go's version variables (PKG:=k8s.io/client-go/pkg)
      printf -- "-X 'k8s.io/client-go/pkg/version.gitVersion=%s' -X 'k8s.io/client-go/pkg/version.gitCommit=module-%s' -X 'k8s.io/client-go/pkg/version.buildDate=%s' " "$2" "$2" "$date" ;;
  esac
}

build_component() {
  local comp="$1" version dir pkg name out start end ldflags
  version="$(version_of "$comp")"
  dir="$bin_root/$comp-$version"
  mkdir -p "$dir"
  ldflags="-s -w $(ldflags_for "$comp" "$version")"
  while read -r pkg name; do
    out="$dir/$name"
    if [[ -x "$out" && -z "${FORCE:-}" ]]; then
      echo "== $comp $version: $name present ($out)"
      continue
    fi
    echo "== $comp $version: building $name"
    start=$(date +%s.%N)
    (cd "$here/$comp" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
    end=$(date +%s.%N)
    printf '== %s %s: built %s in %.1f s\n' "$comp" "$version" "$name" "$(awk "BEGIN{print $end - $start}")"
  done < <(targets "$comp")
  if [[ "$comp" == keda ]]; then
    # The tests read KEDA's CRDs (config/crd/bases) from the module cache: make sure the module is there even
    # when the binaries came from elsewhere (e.g. a CI cache of the bin dir).
    (cd "$here/keda" && go mod download github.com/kedacore/keda/v2)
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
  [[ -n "${upstream[$comp]:-}" ]] || { echo "unknown component: $comp (one of: ${all[*]})" >&2; exit 2; }
  build_component "$comp"
done
echo "== all done in $(( $(date +%s) - total_start )) s (binaries under $bin_root)"
