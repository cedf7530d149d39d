"""Coverage-guided fuzzing of efird with atheris (see fuzz/README.md)."""
