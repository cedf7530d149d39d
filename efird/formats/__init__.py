"""Readers and writers for variable-store files other tools and firmware produce."""
