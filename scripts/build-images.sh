#!/usr/bin/env bash
# Build KubeTune's images from the repository root:
#   <registry>/operator:<version>        the operator (root Dockerfile)
#   <registry>/trainer:<version>         the trainer on CUDA (trainer-image/Dockerfile)
#   <registry>/trainer:<version>-cpu     the trainer on the CPU (VARIANT=cpu), for kind and tests
#
# Environment: REGISTRY (default ghcr.io/kubetune), VERSION (default: pyproject.toml's),
# VARIANTS ("cuda cpu"; "cpu" alone for a kind cluster), DOCKER (default docker),
# EXTRA_BUILD_ARGS (passed to every build, e.g. "--build-arg TORCH_VERSION=2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
if ! command -v "$DOCKER" >/dev/null; then
  echo "build-images: '$DOCKER' is missing: install Docker (or set DOCKER to a compatible CLI)" >&2
  exit 1
fi
REGISTRY=${REGISTRY:-ghcr.io/kubetune}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
VARIANTS=${VARIANTS:-cuda cpu}
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# shellcheck disable=SC2206  # EXTRA_BUILD_ARGS is a list of words on purpose
extra=(${EXTRA_BUILD_ARGS:-})
common=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" "${extra[@]}")

build() {  # build TAG [docker build arguments...]
  local tag=$1
  shift
  echo "build-images: $tag"
  "$DOCKER" build "${common[@]}" "$@" -t "$tag" .
}

build "$REGISTRY/operator:$VERSION" -f Dockerfile
for variant in $VARIANTS; do
  case $variant in
    cuda) build "$REGISTRY/trainer:$VERSION" -f trainer-image/Dockerfile --build-arg VARIANT=cuda ;;
    cpu) build "$REGISTRY/trainer:$VERSION-cpu" -f trainer-image/Dockerfile --build-arg VARIANT=cpu ;;
    *) echo "build-images: unknown variant '$variant' in VARIANTS (cuda, cpu)" >&2; exit 2 ;;
  esac
done
