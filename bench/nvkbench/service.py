"""One running nvkmd for the figures about a daemon at rest (P4, P5, P6,
P8): a scratch root with 30 kernels (the machine's real header kernels,
built, and bare kernel directories for the rest), served on a private
bus when the D-Bus adapter has landed."""

from __future__ import annotations

from .env import BenchError, BenchRoot, DaemonProc, PrivateBus, bus_available, header_kernels, log, wait_on_bus

KERNELS = 30
# The system bus lets one connection wait for at most 128 replies; P8's
# 5000 concurrent calls from one client must all reach nvkmd to load it.
BUS_LIMITS = {"max_replies_per_connection": 8192}


class Service:
    def __init__(self, ctx):
        self.kernel = ctx.kernel
        self.root = BenchRoot(ctx.ws.new("service-root"), ctx.source)
        real = header_kernels()
        for k in real:
            self.root.add_kernel(k, headers_of=k)
        for i in range(KERNELS - len(real)):
            # Older releases of the same series, as a long-lived machine keeps them.
            self.root.add_kernel(f"6.1.0-{i + 1}-amd64")
        self.kernels = KERNELS
        self.no_bus = bus_available()
        self.bus = None if self.no_bus else PrivateBus(ctx.ws, BUS_LIMITS)
        self.env = {"NVKMD_RUNNING_KERNEL": self.kernel}
        self.daemon = DaemonProc(self.root.path, ctx.log_file("service-nvkmd"),
                                 bus=self.bus.address if self.bus else "none", env=self.env)
        log(f"starting nvkmd on a root with {KERNELS} kernels"
            f"{' on a private bus' if self.bus else ' (no bus: ' + self.no_bus + ')'}")
        self.daemon.start()
        try:
            self.daemon.wait_event("ready", timeout=300)
            self.daemon.wait_settled(timeout=3600)
            if not self.root.installed(self.kernel):
                raise BenchError(f"nvkmd did not install a module for {self.kernel}; "
                                 f"log {self.daemon.log_path}")
            self.unique_name = wait_on_bus(self.daemon, self.bus.address) if self.bus else ""
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.daemon.stop()
        if self.bus:
            self.bus.stop()
