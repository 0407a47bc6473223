"""Writers of a run's outputs. They consume metric tables and know nothing of the loops.

A sink has `write(steps, table, rows)` (steps (K,), the metric table (K, C) of
`runner.metrics.Layout`, and the host rows it came from) and `close(summary)`; each flushes to
disk at most `flush_secs` after a write and always on close, so a crash keeps what was logged.
"""
