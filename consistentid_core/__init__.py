"""Host-independent ConsistentID: face regions, encoders, prompt rules and attention maths.

Nothing in this package imports ComfyUI, so it can be tested and reused on its own.
"""
