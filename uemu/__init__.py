"""uemu: Linux uprobes for SDT (USDT) probes, emulated from a ptrace tracer."""

__version__ = "0.1.0"
