#!/bin/sh
# The tests a test guest runs (from /init, in the payload's copy of the
# project): those that apply to a non-x86 machine.  The sample builds native to
# the guest are in samples/build/ (make-payload.sh); the guest has no compiler.
# The console is a terminal, but its reader (CI) wants no colour codes.
UEMU_SAMPLE_BUILDS="$(uname -m)-O2 $(uname -m)-O0"
export UEMU_SAMPLE_BUILDS
exec python3 -m pytest -p no:cacheprovider --color=no tests/unit tests/vm/guest_smoke.py tests/integration
