"""The EFI data model: status codes, GUIDs, attributes, names, time, signature lists."""
