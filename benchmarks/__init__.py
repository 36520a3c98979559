"""The pack's benchmark (``python benchmarks/run.py`` or ``python -m benchmarks``)."""
