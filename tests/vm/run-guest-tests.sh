#!/bin/bash
# Run uemu's tests inside real arm64 and riscv64 Linux kernels, booted under
# qemu-system (TCG).
#
#   tests/vm/run-guest-tests.sh arm64|riscv64|all [PYTEST_ARG...]
#
# PYTEST_ARGs (test files, -k EXPR, -x, ...) replace the default selection, the
# whole suite, in every guest: tests/unit/x.py runs as the guest sees it, from
# the payload's copy of tests/.
# Builds what is missing (guest images are cached in tests/vm/build/), boots
# each guest with a fresh payload, shows its console, and exits with the
# guest's test status (for "all": the first non-zero one).  README.md says what
# the host needs.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/build"

# One guest, from image to exit status; a summary line goes to $summary_file.
guest() {
    local arch=$1 summary_file=$2 started=$SECONDS image payload=$here/build/payload-$1.cpio status
    shift 2
    if image=$("$here/build-image.sh" "$arch") && "$here/make-payload.sh" "$arch" "$image" "$payload" "$@"; then
        local ready=$((SECONDS - started))
        "$here/boot.sh" "$arch" "$image" "$payload"
        status=$?
        echo "$arch: exit status $status; image and payload $ready s, boot and tests $((SECONDS - started - ready)) s" \
            > "$summary_file"
    else
        status=$?
        echo "$arch: exit status $status while building the image or the payload" > "$summary_file"
    fi
    return "$status"
}

target=${1:-}
shift $(($# > 0))
case $target in
    arm64 | riscv64)
        guest "$target" "$here/build/summary-$target" "$@"
        status=$?
        arches=("$target")
        ;;
    all)
        # Each guest's tests keep about one host core busy (one pytest, one
        # vCPU at a time mostly), so two guests side by side take little more
        # than the slower one.  Their consoles are shown one after the other.
        arches=(arm64 riscv64)
        pids=()
        for arch in "${arches[@]}"; do
            guest "$arch" "$here/build/summary-$arch" "$@" > "$here/build/console-$arch.log" 2>&1 &
            pids+=($!)
        done
        status=0
        for i in "${!arches[@]}"; do
            wait "${pids[$i]}"
            result=$?
            cat "$here/build/console-${arches[$i]}.log"
            [ "$status" != 0 ] || status=$result
        done
        ;;
    *) echo "usage: run-guest-tests.sh arm64|riscv64|all [PYTEST_ARG...]" >&2; exit 2 ;;
esac
for arch in "${arches[@]}"; do
    echo "run-guest-tests.sh: $(cat "$here/build/summary-$arch")"
done
exit "$status"
