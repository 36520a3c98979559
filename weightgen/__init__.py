"""Random-weight model files in the exact formats of the released ones.

Real weights cannot be downloaded here, so tests and benchmarks exercise the real
loaders on files this package writes: same file types, key names and shapes (or
reduced shapes for fast unit tests), placed under a ComfyUI-style ``models/`` tree.
Run ``python -m weightgen --help``.
"""
