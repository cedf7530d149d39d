"""`python -m fuzz`: the fuzz runner (fuzz/run.py)."""

from fuzz.run import main

raise SystemExit(main())
