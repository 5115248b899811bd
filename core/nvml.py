"""Raw NVML reading through nvidia-ml-py (`pynvml`).

`pynvml` is imported only inside `load()`, so importing procguard never loads the driver's library. Every
function takes the NVML module as an argument: the real `pynvml`, or a test fake implementing the same few
functions (`nvmlInit`, `nvmlShutdown`, `nvmlDeviceGetCount`, `nvmlDeviceGetHandleByIndex`, `nvmlDeviceGetName`,
`nvmlDeviceGetUUID`, `nvmlDeviceGetMemoryInfo`, `nvmlDeviceGetUtilizationRates`, `nvmlDeviceGetMinorNumber`,
`nvmlDeviceGetComputeRunningProcesses`, `nvmlDeviceGetGraphicsRunningProcesses` and the `NVMLError` class).

Device indices are NVML's (PCI bus order). CUDA numbers devices fastest-first unless
`CUDA_DEVICE_ORDER=PCI_BUS_ID` and renumbers them under `CUDA_VISIBLE_DEVICES`: match on `uuid` to be sure.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

# NVML return codes (nvml.h); read from the module when it has them.
_UNINITIALIZED = 1
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_LIB_RM_VERSION_MISMATCH = 18

LIBRARY_NAME = "libnvidia-ml.so.1"


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int  # NVML index
    name: str
    uuid: str  # "GPU-xxxxxxxx-..."
    memory_total: int  # bytes
    memory_used: int
    memory_free: int
    utilization: int | None  # percent of time a kernel ran over the last sample period; None if unsupported
    minor: int | None = (
        None  # the N of /dev/nvidiaN (maps the kernel's device holders to this GPU); None: unknown
    )


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int  # as NVML reports it: the host's PID namespace, which may not be ours
    device: int  # NVML device index
    memory_used: int | None  # bytes; None where NVML can't tell (MIG without privileges, WDDM)


class NvmlUnavailable(Exception):
    """NVML can't be used here; `reason` says why in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _code(nvml: Any, exc: BaseException, name: str, default: int) -> bool:
    return getattr(exc, "value", None) == getattr(nvml, name, default)


def _init_reason(nvml: Any, exc: BaseException) -> str:
    if _code(nvml, exc, "NVML_ERROR_LIBRARY_NOT_FOUND", _LIBRARY_NOT_FOUND):
        return f"NVML library not found ({LIBRARY_NAME}): no NVIDIA driver"
    if _code(nvml, exc, "NVML_ERROR_DRIVER_NOT_LOADED", _DRIVER_NOT_LOADED):
        return "NVIDIA driver not loaded (NVML found but the kernel driver is not running)"
    if _code(nvml, exc, "NVML_ERROR_NO_PERMISSION", _NO_PERMISSION):
        return "no permission to use NVML (/dev/nvidia* not accessible)"
    if _code(nvml, exc, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", _LIB_RM_VERSION_MISMATCH):
        return "NVML / driver version mismatch (driver updated without reboot?)"
    return f"NVML init failed: {exc}"


def _import_pynvml() -> Any:
    try:
        import pynvml  # lazy: loading procguard must not touch the driver
    except ImportError as e:
        raise NvmlUnavailable(f"nvidia-ml-py is not installed (import pynvml failed: {e})") from e
    return pynvml


def load(nvml: Any = None) -> Any:
    """Import `pynvml` (unless a module is given), initialise it and check there is a device.

    Returns the initialised module; raises `NvmlUnavailable` with the reason otherwise.
    """
    if nvml is None:
        nvml = _import_pynvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise NvmlUnavailable(_init_reason(nvml, e)) from e
    except Exception as e:  # e.g. NVMLLibraryMismatchError, OSError from ctypes
        raise NvmlUnavailable(f"NVML init failed: {type(e).__name__}: {e}") from e
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception as e:
        shutdown(nvml)
        raise NvmlUnavailable(f"NVML could not count devices: {e}") from e
    if count <= 0:
        shutdown(nvml)
        raise NvmlUnavailable("no NVIDIA GPU found (NVML loaded, 0 devices)")
    return nvml


def shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):
        nvml.nvmlShutdown()


def _text(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _running(nvml: Any, handle: object, base: str) -> list[Any]:
    """Compute or graphics processes of one device. The unversioned binding needs a recent driver: fall back
    to `_v2` where the driver lacks the symbol; an unsupported query is an empty list."""
    # Only where this binding has the class (older nvidia-ml-py lacks it); `except ()` catches nothing.
    found = getattr(nvml, "NVMLLibraryMismatchError", None)
    mismatch: tuple[type[BaseException], ...] = (
        (found,) if isinstance(found, type) and issubclass(found, BaseException) else ()
    )
    for name in (base, base + "_v2"):
        fn = getattr(nvml, name, None)
        if fn is None:
            continue
        try:
            return list(fn(handle))
        except nvml.NVMLError as e:
            if _code(nvml, e, "NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND):
                continue
            if _code(nvml, e, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED) or _code(
                nvml, e, "NVML_ERROR_NO_PERMISSION", _NO_PERMISSION
            ):
                return []
            raise
        except mismatch:
            continue
    return []


def _utilization(nvml: Any, handle: object) -> int | None:
    try:
        return int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:
        return None


def _minor(nvml: Any, handle: object) -> int | None:
    """The device's minor number (its /dev/nvidiaN); None where NVML can't tell (not supported, no permission)."""
    try:
        return int(nvml.nvmlDeviceGetMinorNumber(handle))
    except nvml.NVMLError:
        return None


def minor_to_index(devices: tuple[GpuDevice, ...] | list[GpuDevice]) -> dict[int, int]:
    """/dev/nvidiaN minor -> NVML index, for the devices whose minor NVML reported (never a guess that they
    are equal: under CUDA_VISIBLE_DEVICES or in a container they often are not)."""
    return {d.minor: d.index for d in devices if d.minor is not None}


def read(nvml: Any) -> tuple[tuple[GpuDevice, ...], tuple[GpuProcess, ...]]:
    """Read every device and the processes on it from an initialised NVML module.

    Processes are the union of compute and graphics processes, one entry per (pid, device); where both lists
    name a process, the larger figure is kept. NVML errors other than "not supported" propagate.
    """
    devices: list[GpuDevice] = []
    procs: dict[tuple[int, int], int | None] = {}
    for index in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(index)
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        devices.append(
            GpuDevice(
                index=index,
                name=_text(nvml.nvmlDeviceGetName(h)),
                uuid=_text(nvml.nvmlDeviceGetUUID(h)),
                memory_total=int(mem.total),
                memory_used=int(mem.used),
                memory_free=int(mem.free),
                utilization=_utilization(nvml, h),
                minor=_minor(nvml, h),
            )
        )
        for base in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for p in _running(nvml, h, base):
                used = getattr(p, "usedGpuMemory", None)
                used = None if used is None else int(used)
                key = (int(p.pid), index)
                if key in procs:
                    old = procs[key]
                    used = old if used is None else used if old is None else max(old, used)
                procs[key] = used
    processes = tuple(GpuProcess(pid=pid, device=dev, memory_used=m) for (pid, dev), m in procs.items())
    return tuple(devices), processes
