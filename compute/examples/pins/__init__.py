"""Signals of the pins galaxy."""
