"""Root-run administration: driver source checkouts (dkms.conf, /usr/src links, DKMS
registration) and fix."""
