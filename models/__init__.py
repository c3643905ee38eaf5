"""Trained weights and their model cards, installed with streamer as ``streamer.models``."""
