#!/bin/bash
# Build the kernel and root file system of one test guest from Debian packages
# and PyPI wheels, and print the folder that holds them (Image, base.cpio,
# python-version).
#
#   build-image.sh arm64|riscv64
#
# Cached: the folder's name carries a hash of this script and of what it runs,
# which hold the package lists, so a warm run only prints the name.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
arch=${1:?usage: build-image.sh arm64|riscv64}

# python-ptrace >= 0.9.9 (Debian has 0.9.8, without RISC-V) and the test tools
# come from PyPI as pure wheels.  PyPI has capstone wheels for aarch64 but none
# for riscv64, where Debian trixie's python3-capstone (5.x) takes its place.
wheels=(python-ptrace==0.9.9 pyelftools==0.33 pytest==9.0.3 pytest-timeout==2.4.0 hypothesis==6.155.2)
case $arch in
    # bookworm has no riscv64 port; its kernels are 6.1 (arm64), trixie's 6.12.
    arm64) suite=bookworm qemu_user=aarch64 debs=; wheels+=(capstone==5.0.9) ;;
    riscv64) suite=trixie qemu_user=riscv64 debs=,python3-capstone ;;
    *) echo "build-image.sh: unknown arch '$arch' (arm64, riscv64)" >&2; exit 2 ;;
esac
# binutils: the tests read notes and segments with readelf.
debs="linux-image-$arch,busybox-static,python3,binutils$debs"

key=$(cat "$0" "$here/install-wheels.py" | sha256sum | cut -c1-12)
out=$here/build/image-$arch-$key
if [ -e "$out/base.cpio" ]; then
    echo "$out"
    exit 0
fi

# The host's own Debian mirror, so that no host name is written here.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
mkdir -p "$here/build"
work=$(mktemp -d "$here/build/.image-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
started=$SECONDS

# --variant=extract unpacks the packages and their dependencies without running
# any of their (foreign) maintainer scripts; busybox stands in for what those
# would have set up.
mmdebstrap --quiet --variant=extract --arch="$arch" --include="$debs" "$suite" "$root" "$mirror" >&2
# extract skips the merged-/usr symlinks that programs' interpreters go through.
for dir in bin sbin lib; do
    [ -e "$root/$dir" ] || ln -s "usr/$dir" "$root/$dir"
done
[ -e "$root/bin/busybox" ] || ln -s /usr/bin/busybox "$root/bin/busybox"
ln -sf busybox "$root/bin/sh"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
mkdir -p "$root"/{proc,sys,dev,tmp,run,root}

# The kernel boots from outside the initrd (-kernel); its modules and device
# trees are not needed (uprobes, tracefs and ptrace are built in, QEMU makes the
# device tree).  What else goes keeps the initrd, which TCG unpacks at every
# boot, small: glibc's iconv modules (Python has its own codecs), docs.
find "$root/boot" -name 'vmlinu[xz]-*' -exec cp {} "$work/Image" \;
rm -rf "$root"/boot "$root"/usr/lib/modules "$root"/lib/modules "$root"/usr/lib/linux-image-* \
    "$root"/usr/lib/*-linux-gnu/gconv "$root"/usr/share/{doc,man,info,locale}

python=$(basename "$(ls "$root"/usr/bin/python3.* | grep -E '/python3\.[0-9]+$')")
pip download --quiet --disable-pip-version-check --no-cache-dir --only-binary=:all: \
    --platform "manylinux2014_${qemu_user}" --platform "linux_${qemu_user}" \
    --python-version "${python#python}" --dest "$work/wheels" "${wheels[@]}" >&2
python3 "$here/install-wheels.py" "$root" "${python#python}" "$work/wheels"/*.whl

# Byte-compile with the guest's own interpreter under qemu-user (.pyc files
# are tied to the Python version, not the CPU): the guest's root file system
# is a fresh ramfs at each boot, so whatever it compiled itself would be
# compiled again, under TCG, at every run.  No -j: its worker processes would
# start the guest interpreter without qemu-user.  -L makes the guest's libraries
# resolve inside the root; -s/-p make tracebacks show guest paths.
"qemu-$qemu_user-static" -L "$root" "$root/usr/bin/$python" -m compileall -q -s "$root" -p / \
    "$root/usr/lib/$python" "$root/usr/lib/python3/dist-packages" "$root/usr/local/lib/$python" >&2

# The payload installs uemu for this interpreter too.
echo "${python#python}" > "$work/python-version"
(cd "$root" && find . -print0 | cpio --null --create --format=newc --quiet) > "$work/base.cpio"
rm -rf "$root" "$here"/build/image-"$arch"-*
mv "$work" "$out"
echo "build-image.sh: $arch image in $((SECONDS - started)) s: $(du -h "$out/base.cpio" | cut -f1) root," \
    "kernel $(du -h "$out/Image" | cut -f1)" >&2
echo "$out"
