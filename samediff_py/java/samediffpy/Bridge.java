package samediffpy;

import java.io.OutputStream;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.nd4j.autodiff.samediff.SDVariable;
import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.autodiff.samediff.internal.SameDiffOp;
import org.nd4j.autodiff.samediff.internal.Variable;
import org.bytedeco.javacpp.Pointer;
import org.nd4j.linalg.api.buffer.DataBuffer;
import org.nd4j.linalg.api.buffer.DataType;
import org.nd4j.linalg.api.ndarray.INDArray;
import org.nd4j.linalg.factory.Nd4j;
import org.nd4j.nativeblas.NativeOpsHolder;

/**
 * Pinned, overload-free entry points for samediff_py.
 *
 * pyjnius resolves Java overloads poorly (Python lists bind to int[] before long[], maps and varargs
 * often match nothing), and every ambiguous call costs microseconds. Each method here has exactly one
 * signature, so the Python side never depends on pyjnius's overload guessing.
 */
public final class Bridge {
    private Bridge() {}

    static {
        Nd4j.getBackend();  // NativeOpsHolder needs the backend's properties loaded first
        FixedOps.register();  // before any gradient function exists: see FixedOps
    }

    // ---------------------------------------------------------------- arrays

    /** A detached, C-ordered, uninitialised array; Python fills it by one native memory copy. */
    public static INDArray alloc(DataType dtype, long[] shape) {
        for (long d : shape) {
            if (d == 0) return Nd4j.create(dtype, shape);  // empty arrays have no buffer
        }
        return Nd4j.createUninitializedDetached(dtype, 'c', shape);
    }

    /**
     * An array over memory nd4j does not own (a C-contiguous numpy buffer): no copy, constant time.
     * The caller keeps the numpy array alive for as long as this INDArray is used, and dup()s it before
     * storing it anywhere that outlives the call (variables, constants).
     */
    public static INDArray wrap(long address, DataType dtype, long[] shape) {
        long n = 1;
        for (long d : shape) n *= d;
        if (n == 0) return Nd4j.create(dtype, shape);
        Pointer p = NativeOpsHolder.getInstance().getDeviceNativeOps().pointerForAddress(address);
        long bytes = n * dtype.width();
        p.capacity(bytes).limit(bytes);
        DataBuffer buf = Nd4j.createBuffer(p, n, dtype);
        if (shape.length == 0) return Nd4j.create(buf, shape, new long[0], 0, 'c', dtype);
        long[] stride = new long[shape.length];
        long s = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            stride[i] = s;
            s *= Math.max(shape[i], 1);
        }
        return Nd4j.create(buf, shape, stride, 0, 'c', dtype);
    }

    /**
     * Everything Python needs for a numpy view, in ONE call (each pyjnius call costs tens of microseconds):
     * {address of first element (0 if empty), DataType ordinal, 1 if in a workspace (copy it out via
     * {@link #detached} first), rank, shape..., strides in elements...}.
     */
    public static long[] describe(INDArray a) {
        int rank = a.rank();
        long[] out = new long[4 + 2 * rank];
        if (!a.isEmpty()) {
            out[0] = a.data().address() + a.offset() * a.data().getElementSize();
        }
        out[1] = a.dataType().ordinal();
        out[2] = a.isAttached() ? 1 : 0;
        out[3] = rank;
        long[] shape = a.shape();
        long[] stride = a.stride();
        for (int i = 0; i < rank; i++) {
            out[4 + i] = shape[i];
            out[4 + rank + i] = stride[i];
        }
        return out;
    }

    /**
     * Copies {@code src} into the variable's own array, in place: the updater state and any live training
     * session keep referring to the same array (replacing the array object made the next update vanish).
     */
    public static void assign(SDVariable v, INDArray src) {
        INDArray a = v.getArr();
        if (a == null) throw new IllegalStateException("variable " + v.name() + " has no array");
        a.assign(src);
    }

    /** The array itself if it lives outside any workspace, else a detached copy. */
    public static INDArray detached(INDArray a) {
        return a.isAttached() ? a.detach() : a;
    }

    // ---------------------------------------------------------------- graph building

    public static SDVariable placeholder(SameDiff sd, String name, DataType dtype, long[] shape) {
        return sd.placeHolder(name, dtype, shape);
    }

    public static SDVariable variable(SameDiff sd, String name, INDArray value) {
        return sd.var(name, value);
    }

    public static SDVariable constant(SameDiff sd, String name, INDArray value) {
        return sd.constant(name, value);
    }

    public static SDVariable reshape(SameDiff sd, String name, SDVariable x, long[] shape) {
        return sd.reshape(name, x, shape);
    }

    public static SDVariable permute(SameDiff sd, String name, SDVariable x, int[] axes) {
        return sd.permute(name, x, axes);
    }

    public static SDVariable reduce(SameDiff sd, String op, String name, SDVariable x, boolean keepDims, int[] axes) {
        switch (op) {
            case "sum": return sd.sum(name, x, keepDims, axes);
            case "mean": return sd.mean(name, x, keepDims, axes);
            case "max": return sd.max(name, x, keepDims, axes);
            case "min": return sd.min(name, x, keepDims, axes);
            case "prod": return sd.prod(name, x, keepDims, axes);
            default: throw new IllegalArgumentException("unknown reduction " + op);
        }
    }

    public static SDVariable concat(SameDiff sd, String name, int axis, SDVariable[] xs) {
        return sd.concat(name, axis, xs);
    }

    public static SDVariable stack(SameDiff sd, String name, int axis, SDVariable[] xs) {
        return sd.stack(name, axis, xs);
    }

    public static SDVariable stridedSlice(SameDiff sd, String name, SDVariable x, long[] begin, long[] end,
                                          long[] strides, int beginMask, int endMask, int shrinkAxisMask) {
        return sd.stridedSlice(name, x, begin, end, strides, beginMask, endMask, 0, 0, shrinkAxisMask);
    }

    /**
     * {@code [..., d] @ [d, e] -> [..., e]} for any rank of x: mmul needs equal ranks, so flatten the leading
     * axes, multiply, and restore them from x's runtime shape (leading dims may be unknown when building).
     */
    public static SDVariable matmulLast(SameDiff sd, String name, SDVariable x, SDVariable w, int rank, long d,
                                        long e) {
        SDVariable flat = sd.reshape(name + "/flat", x, -1, d);
        SDVariable y = flat.mmul(name + "/mmul", w);
        SDVariable lead = sd.stridedSlice(name + "/lead", sd.shape(name + "/shape", x), new long[]{0},
                                          new long[]{rank - 1}, new long[]{1});
        SDVariable tail = sd.constant(name + "/tail", Nd4j.createFromArray(new long[]{e}).castTo(lead.dataType()));
        return sd.reshape(name, y, sd.concat(name + "/outshape", 0, lead, tail));
    }

    /** {@link #matmulLast} with {@code w} used transposed ({@code [e, d]}: {@code x @ w.T}) without copying it. */
    public static SDVariable matmulLastT(SameDiff sd, String name, SDVariable x, SDVariable w, int rank, long d,
                                         long e) {
        SDVariable flat = sd.reshape(name + "/flat", x, -1, d);
        SDVariable y = sd.mmul(name + "/mmul", flat, w, false, true, false);
        SDVariable lead = sd.stridedSlice(name + "/lead", sd.shape(name + "/shape", x), new long[]{0},
                                          new long[]{rank - 1}, new long[]{1});
        SDVariable tail = sd.constant(name + "/tail", Nd4j.createFromArray(new long[]{e}).castTo(lead.dataType()));
        return sd.reshape(name, y, sd.concat(name + "/outshape", 0, lead, tail));
    }

    /** {@code x @ w.T} for rank-2 operands, without copying {@code w}. */
    public static SDVariable matmulT(SameDiff sd, String name, SDVariable x, SDVariable w) {
        return sd.mmul(name, x, w, false, true, false);
    }

    /** {@code x} reshaped to {@code like}'s run-time shape (same element count; dims unknown when building). */
    public static SDVariable reshapeLike(SameDiff sd, String name, SDVariable x, SDVariable like) {
        return sd.reshape(name, x, sd.shape(name + "/shape", like));
    }

    public static SDVariable gather(SameDiff sd, String name, SDVariable table, SDVariable ids, int axis) {
        return FixedOps.gather(sd, name, table, ids, axis);
    }

    public static SDVariable select(SameDiff sd, String name, SDVariable cond, SDVariable x, SDVariable y) {
        return FixedOps.select(sd, name, cond, x, y);
    }

    /**
     * DL4J's fused multi-head attention (time LAST: q [B, nIn, Tq], k/v [B, nIn, Tk]; mask [B, Tk], 1 = keep).
     * With {@code withWeights} it returns {output, weights [B, H, Tk, Tq]}; that form has no gradient in
     * M2.1, so it is used for inspection only.
     */
    public static SDVariable[] attention(SameDiff sd, String name, SDVariable q, SDVariable k, SDVariable v,
                                         SDVariable wq, SDVariable wk, SDVariable wv, SDVariable wo,
                                         SDVariable mask, boolean scaled, boolean withWeights) {
        if (!withWeights) {
            return new SDVariable[]{sd.nn().multiHeadDotProductAttention(name, q, k, v, wq, wk, wv, wo, mask, scaled)};
        }
        SDVariable[] outs = new org.nd4j.linalg.api.ops.impl.transforms.custom.MultiHeadDotProductAttention(
                sd, q, k, v, wq, wk, wv, wo, mask, scaled, true).outputVariables(name + "_pair");
        return outs;
    }

    /**
     * {@code table[:n]} where n = like.shape[axis] at run time: e.g. the first T rows of a position table
     * for a batch of (unknown when building) length T.
     */
    public static SDVariable leadingRows(SameDiff sd, String name, SDVariable table, SDVariable like, int axis,
                                         int tableRank) {
        SDVariable n = sd.castTo(sd.stridedSlice(name + "/len", sd.shape(name + "/shape", like), new long[]{axis},
                new long[]{axis + 1}, new long[]{1}), DataType.INT);
        int[] rest = new int[tableRank - 1];
        java.util.Arrays.fill(rest, -1);
        SDVariable size = sd.concat(name + "/size", 0, n, sd.constant(name + "/rest", Nd4j.createFromArray(rest)));
        SDVariable begin = sd.constant(name + "/begin", Nd4j.createFromArray(new int[tableRank]));
        return sd.slice(name, table, begin, size);
    }

    /** Batched matrix product over the last two axes (equal ranks, equal batch dims). */
    public static SDVariable batchMatmul(SameDiff sd, String name, SDVariable a, SDVariable b, boolean transposeA,
                                         boolean transposeB) {
        return sd.mmul(name, a, b, transposeA, transposeB, false);
    }

    /** libnd4j's fused layer norm over {@code dims} (channels last): no epsilon in M2.1. */
    public static SDVariable layerNorm(SameDiff sd, String name, SDVariable x, SDVariable gain, SDVariable bias,
                                       int[] dims) {
        return sd.nn().layerNorm(name, x, gain, bias, false, dims);
    }

    /**
     * libnd4j's fused softmax cross-entropy, mean over non-zero weights (one op, one backward op). Its
     * gradient ignores the upstream gradient (M2.1), so it is only right as the final loss: samediff_py
     * refuses any op that consumes it.
     */
    public static SDVariable fusedSoftmaxCrossEntropy(SameDiff sd, String name, SDVariable oneHot, SDVariable logits,
                                                      SDVariable weights) {
        return sd.loss().softmaxCrossEntropy(name, oneHot, logits, weights,
                org.nd4j.autodiff.loss.LossReduce.MEAN_BY_NONZERO_WEIGHT_COUNT, 0.0);
    }

    public static SDVariable softmax(SameDiff sd, String name, SDVariable x, int axis) {
        return sd.nn().softmax(name, x, axis);
    }

    public static SDVariable oneHot(SameDiff sd, String name, SDVariable ids, int depth, DataType dtype) {
        return sd.oneHot(name, ids, depth, -1, 1.0, 0.0, dtype);
    }

    public static SDVariable zerosLike(SameDiff sd, String name, SDVariable x) {
        return sd.zerosLike(name, x);
    }

    public static SDVariable cast(SameDiff sd, String name, SDVariable x, DataType dtype) {
        return sd.castTo(name, x, dtype);
    }

    /**
     * Renames every single-output op to the name of its output variable, where that name is free as an op
     * name. Needed before saving: M2.1's loader (SameDiff.fromFlatBuffers) looks an op's outputs up by the
     * OP's name among the VARIABLES, so an auto-named op "matmul_1" whose output is "matmul/mmul" gets wired
     * to an unrelated variable called "matmul_1" and the loaded graph cannot run. Returns how many ops were
     * renamed.
     */
    public static int alignOpNames(SameDiff sd) {
        Map<String, SameDiffOp> ops = sd.getOps();
        Map<String, Variable> vars = sd.getVariables();
        int renamed = 0;
        for (String old : new ArrayList<>(ops.keySet())) {
            SameDiffOp op = ops.get(old);
            List<String> outs = op.getOutputsOfOp();
            if (outs == null || outs.size() != 1) continue;
            String target = outs.get(0);
            if (target.equals(old) || ops.containsKey(target)) continue;
            op.getOp().setOwnName(target);
            op.setName(target);
            ops.remove(old);
            ops.put(target, op);
            vars.get(target).setOutputOfOp(target);
            for (String in : op.getInputsToOp() == null ? new ArrayList<String>() : op.getInputsToOp()) {
                List<String> users = vars.get(in).getInputsForOp();
                if (users != null) users.replaceAll(u -> u.equals(old) ? target : u);
            }
            renamed++;
        }
        return renamed;
    }

    // ---------------------------------------------------------------- execution

    /** Records every op execution to a Chrome-trace JSON file (SameDiff's ProfilingListener); null path stops. */
    public static void profile(SameDiff sd, String path) {
        sd.setListeners(new org.nd4j.autodiff.listeners.Listener[0]);
        if (path != null) {
            sd.addListeners(new org.nd4j.autodiff.listeners.profiler.ProfilingListener.Builder(new java.io.File(path))
                    .recordAll().build());
        }
    }

    private static Map<String, INDArray> feedMap(String[] names, INDArray[] arrays) {
        Map<String, INDArray> m = new HashMap<>();
        for (int i = 0; i < names.length; i++) m.put(names[i], arrays[i]);
        return m;
    }

    /** Runs the graph; outputs are detached so they survive later calls. */
    public static INDArray[] output(SameDiff sd, String[] feedNames, INDArray[] feeds, String[] outputs) {
        Map<String, INDArray> res = sd.output(feedMap(feedNames, feeds), outputs);
        INDArray[] out = new INDArray[outputs.length];
        for (int i = 0; i < outputs.length; i++) out[i] = detached(res.get(outputs[i]));
        return out;
    }

    /**
     * (Re)defines the gradient function: loss variables (summed) and the placeholders that need gradients.
     * M2.1 creates the gradient function once, for trainable variables only, so a placeholder's gradient is
     * missing unless named here; setLossVariables discards the old function. M2.1 also prints a line per
     * differentiated op to System.out, which is silenced here.
     */
    public static synchronized void defineGradients(SameDiff sd, String[] losses, String[] placeholders) {
        sd.setLossVariables(losses);
        PrintStream out = System.out;
        System.setOut(new PrintStream(OutputStream.nullOutputStream()));
        try {
            sd.createGradFunction(placeholders);
        } finally {
            System.setOut(out);
        }
    }

    /** Gradients w.r.t. each named node, from the function set by {@link #defineGradients}; null = none. */
    public static INDArray[] gradients(SameDiff sd, String[] feedNames, INDArray[] feeds, String[] wrt) {
        Map<String, INDArray> res = sd.calculateGradients(feedMap(feedNames, feeds), wrt);
        INDArray[] out = new INDArray[wrt.length];
        for (int i = 0; i < wrt.length; i++) {
            INDArray g = res.get(wrt[i]);
            out[i] = g == null ? null : detached(g);
        }
        return out;
    }
}
