"""Writers of a run's outputs. They consume metric tables and know nothing of the loops.

A sink has `write(steps, table, rows)` (steps (K,), the metric table (K, C) of
`runner.metrics.Layout`, and the host rows it came from), which only buffers, `flush()`, which
puts everything written so far on disk in whole records, and `close(summary)`. The runner
decides when to flush (runner.run: within log.flush_secs of a step), so a crash keeps all but
the last moments of what was logged, and a kill never leaves a torn row.
"""
