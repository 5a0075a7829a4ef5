"""One build: the engine, Kbuild and DKMS backends, the product cache, per-kernel
locks, the build log, progress and failure diagnosis."""
