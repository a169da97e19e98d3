"""Runs M2.1's stock classes in a FRESH JVM, without samediff_py's registered fixes (samediffpy.FixedOps is
never loaded: only the plain samediffpy.Sequences builders), and prints what they do as one JSON line.
Used by tests/test_recurrent.py::test_m21_stock_lstm_and_cumsum_bugs (run as a script, never imported)."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np


def main() -> None:
    import jnius_config

    from samediff_py import _jvm  # only for the jar list: this starts no JVM

    jnius_config.add_options("-Xrs")
    jnius_config.set_classpath(*_jvm._classpath())
    from jnius import JavaException, autoclass

    Nd4j = autoclass("org.nd4j.linalg.factory.Nd4j")
    SameDiff = autoclass("org.nd4j.autodiff.samediff.SameDiff")
    HashMap = autoclass("java.util.HashMap")
    Holder = autoclass("org.nd4j.imports.converters.DifferentialFunctionClassHolder")
    Seq = autoclass("samediffpy.Sequences")
    out = {}
    h = Nd4j.getExecutioner().getCustomOperations().get("lstmLayer").getHash()
    out["lstm_class"] = Holder.getInstance().customOpClassForHashAndName(h, "lstmLayer").getName()

    TMP = tempfile.mkdtemp()
    File = autoclass("java.io.File")

    def arr(values, shape, dtype=np.float64):
        path = os.path.join(TMP, f"a{len(os.listdir(TMP))}.npy")
        np.save(path, np.asarray(values, dtype).reshape(shape))
        return Nd4j.createFromNpyFile(File(path))

    rng = np.random.default_rng(0)
    B, T, D, N = 2, 4, 3, 2
    sd = SameDiff.create()
    x = sd.var("x", arr(rng.normal(size=B * T * D), [B, T, D]))
    wx = sd.var("wx", arr(rng.normal(size=D * 4 * N), [D, 4 * N]))
    wr = sd.var("wr", arr(rng.normal(size=N * 4 * N), [N, 4 * N]))
    b = sd.var("b", arr(rng.normal(size=4 * N), [4 * N]))
    lens = sd.constant("lens", arr([4, 2], [2], np.int32))
    y = Seq.stockLstm(sd, "y", x, lens, wx, wr, b, 0)[0]
    c = sd.constant("c", arr(rng.normal(size=B * T * N), [B, T, N]))
    loss = y.mul(c).sum(0, 1, 2)
    sd.setLossVariables(loss.name())
    g = sd.calculateGradients(HashMap(), "x").get("x")
    gx = np.array(g.ravel().toDoubleVector()).reshape(B, T, D)
    yv = np.array(sd.outputSingle(HashMap(), "y").ravel().toDoubleVector()).reshape(B, T, N)
    out["lstm_out_at_padding"] = float(np.abs(yv[1, 2:]).max())
    out["lstm_grad_at_padding"] = float(np.abs(gx[1, 2:]).max())
    path = os.path.join(tempfile.mkdtemp(), "stock.sd")
    sd.save(File(path), False)
    try:
        SameDiff.load(File(path), False)
        out["lstm_load"] = "ok"
    except JavaException as e:
        out["lstm_load"] = f"{e.classname}: {e.innermessage}"
    # cumsum along axis 1 of a [2, 3] array, weighted: d/dv[r, i] sum_t w[t] cumsum(v)[r, t] = sum_{t >= i} w[t]
    sd2 = SameDiff.create()
    v = sd2.var("v", arr([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [2, 3]))
    cs = Seq.cumsum(sd2, "cs", v, False, False, 1)
    w = sd2.constant("w", arr([[1.0, 10.0, 100.0]] * 2, [2, 3]))
    l2 = cs.mul(w).sum(0, 1)
    sd2.setLossVariables(l2.name())
    out["cumsum_grad"] = list(sd2.calculateGradients(HashMap(), "v").get("v").ravel().toDoubleVector())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
