"""samediff_py: build, train and run Deeplearning4j SameDiff graphs from Python, with masks done right.

Rooms, bottom to top (data flows one way): ``errors`` -> ``_jvm`` (pyjnius, JVM start) -> ``arrays``
(numpy <-> INDArray) -> ``padding`` / ``checks`` (numpy: padded batches, feed contracts) -> ``graph`` /
``ops`` (the DSL) -> ``masked`` (masked values and ops) -> ``models`` -> ``checkpoint`` (files) -> ``train``
(fit); ``testing`` holds pad-invariance assertions for users' own test suites.

Importing the package does not start the JVM; the first graph does.
"""

from . import masked, ops, padding
from .errors import BackendMissing, FeedError, JavaError, MaskError, ModelFileError, TrainingError
from .graph import Graph, Var
from .masked import Masked, mask_placeholder

__all__ = [
    "BackendMissing",
    "FeedError",
    "Graph",
    "JavaError",
    "MaskError",
    "Masked",
    "ModelFileError",
    "TrainingError",
    "Var",
    "mask_placeholder",
    "masked",
    "ops",
    "padding",
]
__version__ = "0.2.0"
