"""ghoul: make your own GPT-2-class language model and shape it for a niche domain."""

__version__ = "0.1.0"
