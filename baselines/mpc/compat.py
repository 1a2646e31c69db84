"""The one CrypTen 0.4.1 / torch 2.13 shim: alias the moved ONNX module before the first `import crypten`.

CrypTen imports `torch.onnx._internal.registration`, which torch 2.13 moved under
`torch.onnx._internal.torchscript_exporter`. Every module of this package gets crypten from here.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

_OLD = "torch.onnx._internal.registration"
_NEW = "torch.onnx._internal.torchscript_exporter.registration"


def _alias_onnx_registration() -> None:
    """Make the old module path resolve, if torch no longer provides it."""
    if _OLD in sys.modules:
        return
    try:
        importlib.import_module(_OLD)
    except ModuleNotFoundError:
        sys.modules[_OLD] = importlib.import_module(_NEW)


def import_crypten() -> ModuleType:
    """Return the `crypten` module, importing it behind the compat alias."""
    if "crypten" not in sys.modules:
        _alias_onnx_registration()
    import crypten  # noqa: PLC0415  (import after the alias on purpose)

    return crypten
