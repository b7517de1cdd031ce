#!/bin/bash
# Boot a test guest under qemu-system (TCG) with a payload appended to its
# initrd, show its console, and exit with the status its /init reports.
#
#   boot.sh arm64|riscv64 IMAGE_DIR PAYLOAD.cpio
#
# Exit status: the guest command's; 124 if GUEST_TIMEOUT (seconds, default
# 900) passed first; 125 if the guest stopped without reporting one.
set -uo pipefail
arch=${1:?usage: boot.sh arm64|riscv64 IMAGE_DIR PAYLOAD.cpio}
image=${2:?image folder (build-image.sh)}
payload=${3:?payload archive (make-payload.sh)}
case $arch in
    # pauth-impdef: QEMU's default pointer-authentication algorithm makes the
    # arm64 boot three times slower under TCG.
    arm64) qemu=(qemu-system-aarch64 -machine virt -cpu max,pauth-impdef=on) console=ttyAMA0 ;;
    # -bios default: the OpenSBI firmware that qemu-system-data ships.
    riscv64) qemu=(qemu-system-riscv64 -machine virt -bios default) console=ttyS0 ;;
    *) echo "boot.sh: unknown arch '$arch' (arm64, riscv64)" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Two newc archives back to back: the kernel unpacks both into its root.
cat "$image/base.cpio" "$payload" > "$work/initrd"

timeout --kill-after=10 "${GUEST_TIMEOUT:-900}" "${qemu[@]}" -smp 2 -m 2048 -nographic -no-reboot -nic none \
    -kernel "$image/Image" -initrd "$work/initrd" \
    -append "console=$console rdinit=/init panic=-1 quiet loglevel=3" </dev/null |
    sed -u 's/\r$//' | tee "$work/console"
qemu_status=${PIPESTATUS[0]}
status=$(sed -n 's/^uemu-guest-exit \([0-9]*\)$/\1/p' "$work/console" | tail -n 1)
if [ -z "$status" ] && [ "$qemu_status" = 124 ]; then
    echo "boot.sh: the $arch guest did not finish in ${GUEST_TIMEOUT:-900} s" >&2
    exit 124
fi
exit "${status:-125}"
