"""What the machine has: kernels and their headers, module files, the driver source,
the package databases, DKMS's tool and tree, what nvkmd installed."""
