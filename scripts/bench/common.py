"""Helpers every benchmark script shares: the machine line, a device sync, a ratio table row."""

from __future__ import annotations

import os
import platform

import torch


def machine_line(device: torch.device) -> str:
    """CPU count, torch threads and version, device and python: the head of every table."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return (f"machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, device {device} ({name}), "
            f"python {platform.python_version()}")


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timer measures it (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ratio_row(name: str, ours: float, ref: float, target: float, note: str = "") -> str:
    """A markdown row: ours, reference, their ratio, the target (``<= 0``: none) and whether it is met."""
    ratio = ours / ref
    met = "-" if target <= 0 else ("yes" if ratio >= target else "no")
    shown = "-" if target <= 0 else f">= {target:g}x"
    return f"| {name} | {ours:.2f} | {ref:.2f} | {ratio:.2f}x | {shown} | {met} | {note} |"
