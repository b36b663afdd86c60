#!/usr/bin/env bash
# Builds the release binary and writes dist/fxn-<version>-<target>.tar.gz: the binary, the example
# files, the systemd unit, the README and a SHA256SUMS of them (`sha256sum -c SHA256SUMS` in the
# unpacked folder), and dist/fxn-<version>-<target>.tar.gz.sha256 for the archive itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null; then   # pingora's zlib-ng
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
fi
cargo build --locked --release -p fxn-node

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
target=$(rustc -vV | sed -n 's/^host: //p')
name="fxn-$version-$target"
stage="target/dist/$name"
rm -rf "$stage"
mkdir -p "$stage/examples/conf" dist

install -m 0755 target/release/fxn "$stage/fxn"
install -m 0644 packaging/fxn.service README.md "$stage/"
install -m 0644 config.yaml model_backend.yaml "$stage/examples/"
install -m 0644 conf/fxn.yaml "$stage/examples/conf/"

# The binary names the version it was built as, and the commit.
reported=$("$stage/fxn" --version)
case "$reported" in
    "fxn $version (commit "*) ;;
    *) echo "release.sh: the binary reports \`$reported\`, not version $version" >&2; exit 1 ;;
esac
# The unit as shipped, but for where its binary lies (systemd-analyze checks that it exists).
if command -v systemd-analyze >/dev/null; then
    unit_dir=$(mktemp -d)
    sed "s#/usr/local/bin/fxn#$PWD/$stage/fxn#g" packaging/fxn.service > "$unit_dir/fxn.service"
    systemd-analyze verify "$unit_dir/fxn.service"
    rm -r "$unit_dir"
fi

(cd "$stage" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum > SHA256SUMS)
# Reproducible: sorted names, no owner, every mtime the commit's.
mtime=$(git log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)
tar -C target/dist --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" \
    -czf "dist/$name.tar.gz" "$name"
(cd dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "dist/$name.tar.gz ($reported)"
