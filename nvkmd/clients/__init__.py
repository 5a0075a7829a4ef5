"""The client of the daemon's D-Bus API, shared by nvkmctl, nvkmd-agent and the boot
ready check."""
