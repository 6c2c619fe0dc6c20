"""Warden worker: the bundled inference worker (engine, loaders, OpenAI API), served over mTLS only."""
