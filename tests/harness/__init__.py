"""The one test harness, shared by tests/ and bench/: starting and stopping
processes with their logs (processes), waiting on a condition with a
deadline (waiting), a private dbus-daemon with the project's busconfig
(bus), and scratch roots linked to the machine's real kernel headers
(roots).  pytest finds it through ``pythonpath = ["tests"]``; bench/run puts
tests/ on sys.path.  Nothing here is a pytest fixture: tests/conftest.py
registers those once."""
