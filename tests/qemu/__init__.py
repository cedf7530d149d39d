"""Drive a real QEMU from tests: a qtest client, a virtio-pci driver and a VM launcher."""
