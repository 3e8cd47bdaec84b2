#!/usr/bin/env bash
# `make images` as a newcomer runs it (docs/images.md), checked with a stock
# OCI tool: each archive inspects cleanly with skopeo (user 65532, the
# entrypoint, OCI labels), a rebuild gives the same digest, the executable
# runs as 65532 from the image's own files (its libraries complete, no
# shell in it), and skopeo copies it into an OCI layout directory, which
# is what a push does short of the registry.
source "$(dirname "$0")/../lib/common.sh"
cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
need skopeo "Install skopeo (Debian: apt-get install skopeo)."

make -s images
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for name in millrace-operator millrace-runtime; do
  archive="$CARGO_TARGET_DIR/images/$name-$VERSION.oci.tar"
  [[ -f "$archive" ]] || die "make images wrote no $archive"
  skopeo inspect --config "oci-archive:$archive" > "$work/config.json"
  skopeo inspect "oci-archive:$archive" > "$work/inspect.json"
  python3 - "$work/config.json" "$work/inspect.json" "$name" "$VERSION" "$(git rev-parse HEAD)" <<'PY'
import json, sys
config, inspect, name, version, revision = sys.argv[1:]
c = json.load(open(config))["config"]
labels = json.load(open(inspect))["Labels"]
problems = []
def expect(what, got, want):
    if got != want:
        problems.append(f"{what}: {got!r}, expected {want!r}")
expect("User", c.get("User"), "65532:65532")
expect("Entrypoint", c.get("Entrypoint"), [f"/usr/local/bin/{name}"])
for key, want in [("title", name), ("version", version), ("revision", revision),
                  ("licenses", "Apache-2.0")]:
    expect(f"label org.opencontainers.image.{key}", labels.get(f"org.opencontainers.image.{key}"), want)
for key in ["created", "source", "description"]:
    if not labels.get(f"org.opencontainers.image.{key}"):
        problems.append(f"label org.opencontainers.image.{key} is missing")
if problems:
    sys.exit(f"{name}: " + "; ".join(problems))
PY
  digest=$(skopeo inspect --format '{{.Digest}}' "oci-archive:$archive")

  # Reproducible: built again from scratch, the same digest.
  rm "$archive"
  bash e2e/images.sh release "$name" >/dev/null
  again=$(skopeo inspect --format '{{.Digest}}' "oci-archive:$archive")
  [[ "$again" == "$digest" ]] || die "$name: rebuilt with digest $again, first $digest: the build is not reproducible"

  # Runs from the image's files alone, as its user, and carries no shell.
  rootfs="$work/$name-rootfs"
  "$CARGO_TARGET_DIR/release/millrace-image" unpack "$archive" "$rootfs" >/dev/null
  [[ ! -e "$rootfs/bin/sh" ]] || die "$name: the image has a shell"
  chroot --userspec=65532:65532 "$rootfs" "/usr/local/bin/$name" --help >/dev/null \
    || die "$name: /usr/local/bin/$name --help failed inside its image"

  skopeo --insecure-policy copy -q "oci-archive:$archive" "oci:$work/layout:$VERSION"
  log "$name: $digest (user 65532, entrypoint, labels, reproducible, runs alone, copies)"
done
