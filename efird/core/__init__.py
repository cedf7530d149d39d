"""efird C core: Python wrappers over efird._cext and their pure-Python reference models."""
