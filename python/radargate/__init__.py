"""radargate: RadarGate layers (a rotation-gated mixture of LoRA experts) from Python.

    radargate.Layer              one layer on NumPy arrays (forward, backward, load, save, init)
    radargate.torch.RadarGate    a torch.nn.Module with the library's backward (import radargate.torch)
    radargate.geometry           cone and hull membership with certificates
    radargate.load_model / save_model    model files as the CLI reads and writes them

The maths is docs/MATH.md, the file format docs/FORMAT.md, this package docs/PYTHON.md.
"""

from . import _core, geometry
from ._config import PARAM_NAMES, VARIANTS
from ._layer import Layer, load_model, save_model

__version__ = "0.1.0"
has_cuda = bool(_core.has_cuda)

__all__ = ["Layer", "load_model", "save_model", "geometry", "PARAM_NAMES", "VARIANTS", "has_cuda"]
