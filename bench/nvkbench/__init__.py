"""nvkmd's benchmarks: each figure measures nvkmd against the tool a user
would otherwise run (DKMS, raw make, the bus itself), in the same run, and
reports the ratio.  ``bench/run`` is the entry point."""
