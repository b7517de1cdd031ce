import signal
import sys

# A leaving signal before the session takes them (uemu is still importing, checking
# its words, or has nothing to restore yet) ends uemu as it ends any command, not with
# a KeyboardInterrupt traceback; an ignored SIGINT (a background job) stays ignored.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

from .cli import main

sys.exit(main())
