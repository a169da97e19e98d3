"""samediff_py: build, train and run Deeplearning4j SameDiff graphs from Python, with masks done right.

Rooms, bottom to top (data flows one way): ``_jvm`` (pyjnius, JVM start) -> ``arrays`` (numpy <-> INDArray)
-> ``graph`` / ``ops`` (the DSL) -> ``masked`` (masks, masked ops) -> ``train`` (fit, save) ;
``testing`` holds pad-invariance assertions for users' own test suites.

Importing the package does not start the JVM; the first graph does.
"""

from . import masked, ops
from ._jvm import BackendMissing, JavaError
from .graph import Graph, MaskError, Var
from .masked import Masked, mask_placeholder

__all__ = ["BackendMissing", "Graph", "JavaError", "MaskError", "Masked", "Var", "mask_placeholder", "masked", "ops"]
__version__ = "0.1.0"
