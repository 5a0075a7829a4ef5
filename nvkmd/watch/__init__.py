"""Filesystem events as plain data: the inotify watcher, what an event means, the
debouncer that turns a burst into one rescan."""
