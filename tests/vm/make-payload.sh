#!/bin/bash
# Pack what a test guest runs into a cpio archive that boot.sh appends to the
# image's initrd (the kernel unpacks both, the later over the earlier):
#   /init               tests/vm/init
#   /src                the project's tests and pyproject.toml (pytest's
#                       configuration), and the samples built for the guest
#                       (at -O0 and -O2; riscv64 also -O2 without the C
#                       extension, MARCH=rv64g, whose SDT sites can take the
#                       jump path)
#   /usr/local/...      uemu, installed from its wheel
#
#   make-payload.sh arm64|riscv64 IMAGE_DIR OUT.cpio [PYTEST_ARG...]
#
# PYTEST_ARGs, if any, replace the guest's default selection (guest-tests.sh):
# they go to /src/tests/vm/pytest-args, one a line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd)
arch=${1:?usage: make-payload.sh arm64|riscv64 IMAGE_DIR OUT.cpio}
image=${2:?image folder (build-image.sh)}
out=${3:?output archive}
shift 3
case $arch in
    arm64) target=aarch64 marches=() ;;
    riscv64) target=riscv64 marches=(rv64g) ;;
    *) echo "make-payload.sh: unknown arch '$arch' (arm64, riscv64)" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/src/samples/build"
install -m 755 "$here/init" "$work/root/init"

# The files git would commit (tracked or new, not ignored): no build output,
# caches or guest images.
copy() {
    (cd "$project" && git ls-files -z --cached --others --exclude-standard -- "${@:2}" |
        cpio --null --pass-through --make-directories --quiet "$1")
}
copy "$work/root/src" tests pyproject.toml
if [ $# -gt 0 ]; then
    printf '%s\n' "$@" > "$work/root/src/tests/vm/pytest-args"
fi
# Under the lock tests/conftest.py takes, so that a test session building the
# same samples in this checkout meanwhile does not write the same files.
mkdir -p "$project/samples/build"
for config in 0 2 "${marches[@]/#/2 }"; do  # OPT [MARCH]
    read -r opt march <<< "$config"
    flock "$project/samples/build/.make.lock" make -s -C "$project/samples" -j"$(nproc)" \
        TARGET="$target" OPT="$opt" MARCH="${march:-}" >&2
    cp -a "$project/samples/build/$target-O$opt${march:+-$march}" "$work/root/src/samples/build/"
done

# Installed from a wheel, as users get it: arch/ becomes uemu.arch there.  Built
# from a copy, so that the shared checkout gets no build/ or egg-info writes.
copy "$work/project" pyproject.toml README.md uemu arch
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$work/wheel" "$work/project" >&2
python=$(cat "$image/python-version")
python3 "$here/install-wheels.py" "$work/root" "$python" "$work"/wheel/*.whl

(cd "$work/root" && find . -print0 | cpio --null --create --format=newc --quiet) > "$out"
