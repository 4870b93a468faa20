# Sourced by build-images.sh and test-images.sh: where the images live and
# how buildah is called, so both scripts agree.
#   target   absolute $CARGO_TARGET_DIR (default target/)
#   out      $target/images: the OCI archives and buildah's own storage
#   version  helm/clustermesh/Chart.yaml's appVersion (the images' tag)
#   B        buildah with vfs storage under $out
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"
target=$(cd "$target" && pwd)
out="$target/images"
mkdir -p "$out"
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' helm/clustermesh/Chart.yaml)
[ -n "$version" ] || { echo "no appVersion in helm/clustermesh/Chart.yaml" >&2; exit 1; }
B=(buildah --storage-driver vfs --root "$out/storage" --runroot "$out/run")
