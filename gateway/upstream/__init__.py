"""Connections from the gateway to inference workers."""
