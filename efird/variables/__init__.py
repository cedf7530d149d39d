"""The UEFI variable service: rules, authentication, policy and the SMM protocol."""
