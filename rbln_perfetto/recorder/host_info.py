"""The machine a run was recorded on, as the capture's header keeps it (its provenance starts here).

The exporter shows it in every trace (`exporter.provenance`): `system_info`, the Run slice's args.
"""

from __future__ import annotations

import os
import platform
import time

from .. import rbln_capture_pb2 as pb


def _cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (x86: `model name`; Arm: `Processor`, `CPU part`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> pb.HostInfo:
    """The machine as the capture records it at its start."""
    u = os.uname()
    try:
        load = list(os.getloadavg())
    except OSError:  # not available on this platform
        load = []
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return pb.HostInfo(
        sysname=u.sysname, release=u.release, version=u.version, machine=u.machine, cpu_model=_cpu_model(),
        cpu_count=os.cpu_count() or 0, usable_cpus=usable, load_average=load,
        page_size=os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0,
        timezone_off_mins=time.localtime().tm_gmtoff // 60, python_version=platform.python_version(),
    )
