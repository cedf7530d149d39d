"""The guest side of the boot tests: Debian's kernel, busybox and kexec in an initramfs.

`image` fetches the stock packages with apt (into a cache, nothing is installed), builds
the two-stage initramfs around `init.sh`, and parses the markers the guest prints.
"""
