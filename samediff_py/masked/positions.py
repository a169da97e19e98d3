"""Position ids computed in the graph from the mask, so a left-padded row gets the positions it has alone.

>>> import numpy as np
>>> from samediff_py import Graph, masked
>>> g = Graph()
>>> m = masked.mask_placeholder(g, "mask", padding="left")
>>> g.run({"mask": [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]}, position_ids(m))
array([[0, 0, 0, 1, 2],
       [0, 1, 2, 3, 4]], dtype=int32)
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..graph import Var

__all__ = ["position_ids"]


def position_ids(mask: Var, name: str | None = None) -> Var:
    """Each valid step's index among the VALID steps of its row (``cumsum(mask) - 1``), 0 at padded steps.

    The graph twin of :func:`samediff_py.padding.positions_from_mask`. With right padding these are the absolute
    positions ``0, 1, ...``; with left padding a row's first valid token gets 0, as it would unpadded. Integer ids
    (for a ``gather`` from a position table): nothing flows back through them.

    Args:
        mask: ``[batch, time]`` float mask (1 = valid).
        name: optional name of the output node.

    Returns:
        ``[batch, time]`` int32 Var.
    """
    count = ops.cumsum(mask, 1)
    pos = ops.where(ops.greater(mask, 0.5), ops.subtract(count, 1.0), ops.zeros_like(count), same_shape=True)
    return ops.cast(pos, np.int32, name=name)
