"""Warden gateway: the secure, OpenAI-compatible front door to inference workers.

Kept import-free so that the worker can use the gateway's stdlib-only helpers (TLS, settings)
without pulling in Presidio or any other gateway dependency.
"""
