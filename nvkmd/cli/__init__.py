"""nvkmctl: the thin command-line client, its rendering, local commands and the
boot-time wait-ready."""
