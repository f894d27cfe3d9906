"""Internals that users never import."""
