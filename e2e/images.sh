#!/usr/bin/env bash
# OCI images of the operator, the runtime and the example processor, built
# without a container engine by `millrace-image` (docs/images.md).
#
#   images.sh release [NAME...]   `make images`: release binaries ->
#                                 $CARGO_TARGET_DIR/images/NAME-VERSION.oci.tar
#   images.sh testbed             the test bed's images (e2e/images.conf), from
#                                 the MILLRACE_BUILD_PROFILE binaries already
#                                 built, gzip level 1 -> $CARGO_TARGET_DIR/testbed-images/NAME.oci.tar
#
# Reproducible: the creation time is the last commit's (SOURCE_DATE_EPOCH),
# so the same tree gives the same digests.
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
need ldd "Install libc-bin (Debian)."

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
REVISION=$(git rev-parse HEAD 2>/dev/null || true)
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

# name -> "cargo package|description"
declare -A IMAGES=(
  [millrace-operator]="millrace-operator|The Millrace operator: reconciles StreamApps into worker StatefulSets, places tasks, scales from lag"
  [millrace-runtime]="millrace-runtime|The Millrace worker runtime: runs a StreamApp's pipeline exactly once"
  [millrace-example-enricher]="millrace-example-enricher|A custom Millrace processor built on the runtime library (examples/custom-processor)"
)

# build_image TOOL NAME PROFILE OUT_FILE [--fast]
build_image() {
  local tool="$1" name="$2" profile="$3" out="$4"; shift 4
  local description="${IMAGES[$name]#*|}"
  "$tool" build --binary "$CARGO_TARGET_DIR/$profile/$name" --title "$name" --description "$description" \
    --version "$VERSION" ${REVISION:+--revision "$REVISION"} --out "$out" "$@"
}

case "${1:-}" in
  release)
    shift
    names=("$@")
    (( ${#names[@]} )) || names=(millrace-operator millrace-runtime)
    for n in "${names[@]}"; do
      [[ -n "${IMAGES[$n]:-}" ]] || die "no image named '$n' (one of: ${!IMAGES[*]})"
    done
    cargo build -q --release -p millrace-images
    for n in "${names[@]}"; do
      # Each binary built on its own, just before it is packed: built
      # together with other packages, cargo unifies their dependencies'
      # features and links a different binary (so another digest).
      log "building $n (release)"
      cargo build -q --release -p "${IMAGES[$n]%%|*}"
      build_image "$CARGO_TARGET_DIR/release/millrace-image" "$n" release "$CARGO_TARGET_DIR/images/$n-$VERSION.oci.tar"
    done
    ;;
  testbed)
    # Built by the stack (cargo build -p millrace-images), with the binaries.
    profile="${MILLRACE_BUILD_PROFILE:-debug}"
    for n in "${!IMAGES[@]}"; do
      # The example is only ever built for debug.
      p="$profile"; [[ "$n" == millrace-example-enricher ]] && p=debug
      build_image "$CARGO_TARGET_DIR/debug/millrace-image" "$n" "$p" \
        "$CARGO_TARGET_DIR/testbed-images/$n.oci.tar" --fast >/dev/null
    done
    ;;
  *) die "usage: images.sh release [NAME...] | testbed" ;;
esac
