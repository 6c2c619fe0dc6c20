"""Warden worker: the bundled inference worker, served over mTLS only.

Kept import-free so that ``python -m backend --help`` and the settings load without torch.
"""
