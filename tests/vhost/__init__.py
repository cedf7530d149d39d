"""Test-side vhost-user frontend (QEMU's role) used to drive efird's vhost-user backend.

It lives in the tests, not in `efird`, because it is a test instrument: it must stay
independent of the backend it checks, so it shares no code with `efird.vhost`.
"""
