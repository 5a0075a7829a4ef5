# Laid out like NVIDIA's open-gpu-kernel-modules checkout (version.mk at the
# top, the kernel interface layer in kernel-open/), but tiny: two modules, a
# few conftests, builds in seconds.
NVIDIA_VERSION = 9.9.1
