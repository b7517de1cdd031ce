#!/bin/sh
# The tests a test guest runs (from /init, in the payload's copy of the
# project): those that apply to a non-x86 machine.  The sample builds native to
# the guest are in samples/build/ (make-payload.sh); the guest has no compiler.
# The default build first, then -O0, then the others (riscv64-O2-rv64g), which
# tests/conftest.py gives the jump path's tests alone.
# The console is a terminal, but its reader (CI) wants no colour codes; the
# slowest tests are listed, as they set the guest's time limit (boot.sh).
UEMU_SAMPLE_BUILDS="$(uname -m)-O2 $(uname -m)-O0"
for dir in samples/build/"$(uname -m)"-O*-*; do
    [ -d "$dir" ] && UEMU_SAMPLE_BUILDS="$UEMU_SAMPLE_BUILDS ${dir##*/}"
done
# TCG runs the guest's code 5 to 20 times slower than the host's CPU (uemu's
# start-up: 15 s instead of 0.7 s on a busy 2-core host): the tests' waits
# (tests/integration/tracee.py) are stretched as much.
UEMU_TEST_SLOWDOWN=10
export UEMU_SAMPLE_BUILDS UEMU_TEST_SLOWDOWN
# run-guest-tests.sh ARCH PYTEST_ARG... runs a selection instead of the whole
# suite (make-payload.sh writes the arguments to tests/vm/pytest-args).
if [ -f tests/vm/pytest-args ]; then
    set --
    while IFS= read -r arg; do set -- "$@" "$arg"; done < tests/vm/pytest-args
else
    set -- tests/unit tests/vm/guest_smoke.py tests/integration
fi
exec python3 -m pytest -p no:cacheprovider --color=no --durations=10 "$@"
