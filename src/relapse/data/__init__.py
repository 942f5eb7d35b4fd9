"""Corpora, prepared into the MUSE-shaped splits every method and metric reads (DESIGN §5); the
KnowMem prompt format (prompts.py) and the real-world fact lists (world.py). Data imports only
the top-level helpers: it never loads a model (relapse.models.world probes a base's facts)."""
