"""Signals of the images galaxy."""
