"""Model building blocks: attention over the paged KV cache, rotary embeddings, norms, the sampler."""
