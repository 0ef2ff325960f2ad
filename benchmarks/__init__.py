"""Speed and memory benchmarks (scripts that print tables; run as ``python -m benchmarks.NAME``)."""
