"""What every benchmark prints about the machine it ran on (imported by the scripts in this folder).

A benchmark figure means little without the machine behind it: CPU model, how many cores the
OS shows and how many threads torch used, the load average while it ran (a loaded machine makes
every absolute time pessimistic, and same-run ratios noisy) and the precision of the measured
computation. Each script calls :func:`print_machine` at its start and end.
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> str:
    """``"1-min 5-min 15-min"`` load averages (``"n/a"`` where the OS has none)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line(precision: str, when: str = "start") -> str:
    """One line: ``machine (<when>): <CPU>, <cores> cores, torch threads <t>, load average <..>, precision <p>``."""
    import torch

    omp = os.environ.get("OMP_WAIT_POLICY")
    return (f"machine ({when}): {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} threads "
            f"{torch.get_num_threads()}{', OMP_WAIT_POLICY=' + omp if omp else ''}, load average {load_average()}, "
            f"precision {precision}")


def print_machine(precision: str, when: str = "start") -> None:
    """Print :func:`machine_line` (flushed, so that it is there even if the benchmark fails later)."""
    print(machine_line(precision, when), flush=True)
