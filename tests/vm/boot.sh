#!/bin/bash
# Boot a test guest under qemu-system (TCG) with a payload appended to its
# initrd, show its console, and exit with the status its /init reports.
#
#   boot.sh arm64|riscv64 IMAGE_DIR PAYLOAD.cpio
#
# Exit status: the guest command's; 124 if its time limit passed first; 125 if
# the guest stopped without reporting one.  The limit is GUEST_TIMEOUT seconds,
# by default an hour: what CI's 90 minutes leave the two guests (side by side)
# after setup and the host's tests (.ci/run).
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
limit=${GUEST_TIMEOUT:-3600}
started=$SECONDS

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Two newc archives back to back: the kernel unpacks both into its root.
cat "$image/base.cpio" "$payload" > "$work/initrd"

timeout --kill-after=10 "$limit" "${qemu[@]}" -smp 2 -m 2048 -nographic -no-reboot -nic none \
    -kernel "$image/Image" -initrd "$work/initrd" \
    -append "console=$console rdinit=/init panic=-1 quiet loglevel=3" </dev/null |
    sed -u 's/\r$//' | tee "$work/console"
qemu_status=${PIPESTATUS[0]}
# The CPU time qemu got (the shell's children's, from `times`, run in this shell
# and not a subshell): far below the guest's time, it says the host was busy
# with other work.
times > "$work/times"
cpu=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } printf "%d", s }' "$work/times")
echo "boot.sh: the $arch guest ran $((SECONDS - started)) s of its $limit s limit; qemu had $cpu s of CPU" >&2
# The kernel's own lines may follow on the same console line ("uemu-guest-exit
# 0[  229.39] reboot: Power down", seen with the host loaded): digits, then anything.
status=$(sed -n 's/^uemu-guest-exit \([0-9][0-9]*\).*/\1/p' "$work/console" | tail -n 1)
if [ -z "$status" ] && [ "$qemu_status" = 124 ]; then
    echo "boot.sh: the $arch guest did not finish in $limit s" >&2
    exit 124
fi
exit "${status:-125}"
