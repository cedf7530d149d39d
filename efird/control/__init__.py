"""The toolstack's control interface to a running `efird serve`.

A toolstack (libvirt, xl, a test harness) must be able to ask a per-domain daemon how
it is doing, follow what the guest does (resets, ExitBootServices, Secure Boot
violations), save and restore the daemon's state across migration, reload the store
and stop it. This package carries that over a unix stream socket as JSON lines:

- `efird.control.protocol`: the wire format and `ControlError` (docs/control.md);
- `efird.control.server`: `serve_control`, the `ControlHandler` the daemon implements
  and the `EventBus` it publishes events on;
- `efird.control.client`: a blocking client for toolstacks, scripts and tests.
"""
