"""LVM access: name validation, the command executor, metadata reader."""
