"""A stand-in for `pynvml` (no NVIDIA driver on the CI machine): the few functions procguard.core.nvml calls.

The real NVML path is covered by tests marked `gpu`. Calls are counted in `calls` (function name -> count).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {12: "NVML Shared Library Not Found", 9: "Driver Not Loaded", 3: "Not Supported"}.get(
            self.value, f"NVML error {self.value}"
        )


@dataclass
class FakeDevice:
    name: str = "Fake GPU 80GB"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total: int = 80 << 30
    used: int = 0
    utilization: int | None = 0  # None: NotSupported
    minor: int | None = None  # /dev/nvidiaN; None: the device's position in the list; -1: NotSupported
    compute: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, used bytes)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)


class FakeNvml:
    NVMLError = NVMLError
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_FUNCTION_NOT_FOUND = NVML_ERROR_FUNCTION_NOT_FOUND

    def __init__(
        self,
        devices: list[FakeDevice] | None = None,
        *,
        init_error: int | None = None,
        read_delay: float = 0.0,
    ) -> None:
        self.devices = devices if devices is not None else [FakeDevice()]
        self.init_error = init_error
        self.read_delay = read_delay  # makes a read slow, to exercise concurrent callers
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.initialised = False

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        if self.read_delay:
            time.sleep(self.read_delay)
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeDevice:
        return self.devices[i]

    def nvmlDeviceGetName(self, h: FakeDevice) -> bytes:
        return h.name.encode()  # old pynvml versions return bytes

    def nvmlDeviceGetUUID(self, h: FakeDevice) -> str:
        return h.uuid

    def nvmlDeviceGetMemoryInfo(self, h: FakeDevice) -> SimpleNamespace:
        return SimpleNamespace(total=h.total, used=h.used, free=h.total - h.used)

    def nvmlDeviceGetUtilizationRates(self, h: FakeDevice) -> SimpleNamespace:
        if h.utilization is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=h.utilization, memory=0)

    def nvmlDeviceGetMinorNumber(self, h: FakeDevice) -> int:
        if h.minor == -1:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return next(i for i, d in enumerate(self.devices) if d is h) if h.minor is None else h.minor

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeDevice) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.compute]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: FakeDevice) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.graphics]
