"""vhost-user backend on trio.

Written by hand: no maintained Python implementation of the vhost-user protocol exists
(rust-vmm's vhost-user-backend is the reference we follow in structure). The protocol
glue here knows nothing about what the device does: it hands each descriptor chain to a
`Device` and completes it with what the device wrote.
"""
