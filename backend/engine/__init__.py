"""The inference engine: sequences, KV block accounting, scheduling, model running, the step loop."""
