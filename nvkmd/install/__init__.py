"""Putting modules in place: the atomic module install with depmod, the initramfs step,
cleanup of what is no longer needed."""
