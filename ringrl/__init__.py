"""ringrl: Transformers over hundreds of episodes, with exact Ring Attention."""

__version__ = "0.1.0"
