"""Platform runtime services: time (GetTime ... GetNextHighMonotonicCount) and reset."""
