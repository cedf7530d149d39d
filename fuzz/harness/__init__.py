"""The fuzz harnesses: one module per target, each with a `Harness` whose call takes the
fuzz input. They do not import atheris, so tests can replay inputs through them."""
