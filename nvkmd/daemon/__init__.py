"""The long-running nvkmd: the scheduler core, the service wiring (signals, watcher,
adapters), sd_notify, and --once."""
