"""Profile a device-split SD3 as device commands; export Perfetto traces; query them with SQL."""

from .activation import profile
from .capture import CaptureError, read_info
from .export import ExportError, ExportResult, export
from .summary import Summary

__all__ = ["CaptureError", "ExportError", "ExportResult", "Summary", "export", "profile", "read_info"]
