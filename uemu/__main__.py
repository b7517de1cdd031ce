import os
import signal
import sys

# A leaving signal before the session takes them (uemu is still importing, checking
# its words, or has nothing to restore yet) ends uemu as it ends any command, not with
# a KeyboardInterrupt traceback; an ignored SIGINT (a background job) stays ignored.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

from .cli import main

code = main()
# The interpreter's teardown (clearing every module, a full collection) cost uemu
# 0.1 s of CPU at each exit (samples/dlopen: 0.68 -> 0.56 s), more than a second of wall
# time on a loaded machine.  Nothing is left for it: every process is restored and let
# go, every file uemu wrote is closed, and uemu's state holds at any instant it could die
# (DESIGN 5).  Only the standard streams may hold output; if flushing them fails, the
# interpreter's own exit reports it as it always did.
try:
    sys.stdout.flush()
    sys.stderr.flush()
except (OSError, ValueError, AttributeError):  # a broken pipe, a closed or missing stream
    sys.exit(code)
os._exit(code)
