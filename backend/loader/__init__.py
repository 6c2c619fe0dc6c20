"""Loading checkpoints (GGUF files, Hugging Face directories) and their tokenizers."""
