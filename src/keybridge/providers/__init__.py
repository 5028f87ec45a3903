"""Backends: one package per place keys live; they never import each other."""
