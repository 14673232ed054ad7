"""Domain errors of the search. Raised where the fault is found; the CLI and the HTTP routes turn
them into messages and status codes."""

from __future__ import annotations


class AmcError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AmcError, ValueError):
    """A user-supplied value is wrong. `field` names it (as on the command line / in the job spec)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelLoadError(AmcError):
    """A model name, factory spec or weights file could not be turned into a working model."""


class DataError(AmcError):
    """A dataset spec could not be loaded."""


class UnsupportedLayerError(AmcError):
    """The model contains a layer the pruner cannot handle."""


class BudgetInfeasible(ConfigError):
    """The requested budget cannot be reached, even with every layer at the minimum preserve ratio."""

    def __init__(self, message: str, *, smallest: float | None = None):
        super().__init__("target", message)
        self.smallest = smallest


class ExportError(AmcError):
    """Export to ONNX/TFLite failed, or the exported model disagrees numerically with PyTorch."""


class SearchCancelled(AmcError):
    """The search was asked to stop (cancel request); its checkpoint is intact."""
