"""Content guards: prompt-injection detection and PII redaction (also on streamed output)."""
