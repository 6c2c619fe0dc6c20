"""Test helpers that start real components: redis-server, service processes, certificates."""
