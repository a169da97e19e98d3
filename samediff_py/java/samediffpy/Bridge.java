package samediffpy;

import java.io.OutputStream;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.nd4j.autodiff.listeners.Operation;
import org.nd4j.autodiff.samediff.SDVariable;
import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.autodiff.samediff.api.OutAndGrad;
import org.nd4j.autodiff.samediff.config.ExecutionResult;
import org.nd4j.autodiff.samediff.config.SDValue;
import org.nd4j.autodiff.samediff.internal.SameDiffOp;
import org.nd4j.autodiff.samediff.internal.Variable;
import org.bytedeco.javacpp.Pointer;
import org.nd4j.linalg.api.buffer.DataBuffer;
import org.nd4j.linalg.api.buffer.DataType;
import org.nd4j.linalg.api.ndarray.INDArray;
import org.nd4j.linalg.factory.Environment;
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
        long cacheMB = Long.getLong("samediffpy.arrayCacheMB", -1L);  // -1: M2.1's own (25 % of maxBytes)
        if (cacheMB >= 0) SessionMemory.install(cacheMB << 20, Long.getLong("samediffpy.bigArrayBytes", 0L));
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

    /** {@code x} reshaped to {@code shape(x)[:keep] ++ tail}: the leading dims read at run time. */
    public static SDVariable reshapeTail(SameDiff sd, String name, SDVariable x, int keep, long[] tail) {
        SDVariable shape = sd.shape(name + "/shape", x);
        SDVariable lead = sd.stridedSlice(name + "/lead", shape, new long[]{0}, new long[]{keep}, new long[]{1});
        SDVariable rest = sd.constant(name + "/tail", Nd4j.createFromArray(tail).castTo(lead.dataType()));
        return sd.reshape(name, x, sd.concat(name + "/newshape", 0, lead, rest));
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

    /** Per-position {@code -log softmax(logits)[label]} (libnd4j's op with samediff_py's fixed gradient). */
    public static SDVariable sparseSoftmaxCrossEntropy(SameDiff sd, String name, SDVariable logits,
                                                       SDVariable labels) {
        return FixedOps.sparseSoftmaxCrossEntropy(sd, name, logits, labels);
    }

    /**
     * {@code [0, step, 2*step, ...]}, one entry per element of {@code like} (its length read at run time), in
     * {@code like}'s integer dtype: the offsets of consecutive rows of width {@code step} in a flattened array.
     */
    public static SDVariable rowOffsets(SameDiff sd, String name, SDVariable like, long step) {
        DataType dt = like.dataType();
        SDVariable n = sd.castTo(sd.prod(sd.shape(like), false, 0), dt);
        SDVariable stepV = sd.constant(Nd4j.scalar(step).castTo(dt));
        SDVariable zero = sd.constant(Nd4j.scalar(0L).castTo(dt));
        return sd.range(name, zero, n.mul(stepV), stepV, dt);
    }

    /** Indices {@code [n]} (int64, ascending) where a rank-1 bool {@code cond} is true; empty -> an error-prone
     * empty array in M2.1, so callers make sure one element is always true. */
    public static SDVariable nonzero(SameDiff sd, String name, SDVariable cond) {
        return sd.reshape(name, sd.where(cond), -1);
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

    public static SDVariable softmax(SameDiff sd, String name, SDVariable x, int axis) {
        return sd.nn().softmax(name, x, axis);
    }

    /**
     * The maximum of {@code x} along {@code axis} (kept as size 1), truncated to an integer, with NO gradient
     * path: a shift for softmax / log-softmax, whose result does not depend on it. SameDiff differentiates
     * floating-point variables only, so the round trip through int64 ends the backward pass there; M2.1's
     * {@code stop_gradient} would still run the max's backward (with a zero gradient): 14 ms of a 233 ms
     * encoder training step. Truncation moves the shift by less than 1 (no overflow: exp of at most e);
     * the clip keeps the cast defined (non-finite rows give NaN, as with an exact shift).
     */
    public static SDVariable detachedMax(SameDiff sd, String name, SDVariable x, int axis) {
        SDVariable m = sd.math().clipByValue(sd.max(x, true, axis), -9.0e18, 9.0e18);
        return sd.castTo(name, sd.castTo(m, DataType.LONG), x.dataType());
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

    // ---------------------------------------------------------------- libnd4j's platform helpers (oneDNN)

    /**
     * libnd4j's platform helpers (oneDNN, in the -onednn builds) off while {@code sd} holds M2.1's fused
     * attention op, on otherwise; called before every run. That op's backward runs ~3x slower with oneDNN (in the
     * MLM demo's raw-op variants: 53 vs 16 ms per step; it issues many tiny matmuls, each set up anew), while
     * every other graph measured runs faster with it (matmul, softmax: the base MLM encoder's step 1.2x). The
     * switch is JVM-wide, hence set per run; builds without helpers ignore it; {@link #HELPERS} false keeps
     * them off everywhere (the user's choice, e.g. to compare with a build without oneDNN).
     */
    public static void useHelpersFor(SameDiff sd) {
        boolean allow = HELPERS && !holdsOp(sd, "multi_head_dot_product_attention");
        Environment env = Nd4j.getEnvironment();
        if (env.helpersAllowed() != allow) env.allowHelpers(allow);
    }

    /** {@code -Dsamediffpy.helpers=false} (SAMEDIFF_PY_HELPERS=0): libnd4j's helpers off for every graph. */
    static final boolean HELPERS = !"false".equals(System.getProperty("samediffpy.helpers", "true"));

    static boolean holdsOp(SameDiff sd, String opName) {
        for (SameDiffOp op : sd.getOps().values()) {
            if (opName.equals(op.getOp().opName())) return true;
        }
        return false;
    }

    /** Runs the graph; outputs are detached so they survive later calls. */
    public static INDArray[] output(SameDiff sd, String[] feedNames, INDArray[] feeds, String[] outputs) {
        useHelpersFor(sd);
        Map<String, INDArray> res = sd.output(feedMap(feedNames, feeds), outputs);
        INDArray[] out = new INDArray[outputs.length];
        for (int i = 0; i < outputs.length; i++) out[i] = detached(res.get(outputs[i]));
        SessionMemory.paceCollections();
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

    /**
     * {@code sd.calculateGradientsAndOutputs} with the gradient function's array cache ON.
     *
     * <p>M2.1's own version turns the cache off for the gradient function ({@code gradFn.setEnableCache(false)}),
     * and with it off, InferenceSession never releases an intermediate array: every array of a gradient pass
     * waits for the Java garbage collector, which runs rarely (the Java objects are small), so native memory
     * grows to javacpp's limit (SAMEDIFF_PY_OFFHEAP, half the RAM by default), where each allocation triggers
     * System.gc() and 100 ms sleeps. Measured (head + loss, 2048 x 8000 logits): peak RSS 4.2 GB stock vs
     * 1.7 GB with the cache. The same pass runs here through the (protected) batchOutputHelper, as
     * calculateGradientsAndOutputs does, with the cache on. Requested outputs are never released during the
     * pass (InferenceSession pins them), and callers use them before the next pass.
     */
    public static OutAndGrad gradientsAndOutputs(SameDiff sd, Map<String, INDArray> ph, List<String> outputs,
                                                 List<String> wrt) {
        useHelpersFor(sd);
        if (STOCK_GRADIENTS) return sd.calculateGradientsAndOutputs(ph, outputs, wrt);  // for A/B measurements
        if (sd.getFunction("grad") == null) sd.createGradFunction();
        SameDiff gradFn = sd.getFunction("grad");
        List<String> names = new ArrayList<>(outputs);
        for (String w : wrt) {
            SDVariable g = sd.getVariable(w).getGradient();
            if (g != null) names.add(g.name());
        }
        gradFn.setEnableCache(true);
        gradFn.setListeners(sd.getListeners());
        ExecutionResult r;
        try {
            r = (ExecutionResult) BATCH_OUTPUT.invoke(gradFn, ph, null, Operation.TRAINING, names.toArray(new String[0]));
        } catch (java.lang.reflect.InvocationTargetException e) {
            Throwable c = e.getCause();
            if (c instanceof RuntimeException) throw (RuntimeException) c;
            throw new IllegalStateException(c);
        } catch (IllegalAccessException e) {
            throw new IllegalStateException(e);
        }
        Map<String, INDArray> res = new HashMap<>();
        if (r.hasValues()) {
            for (Map.Entry<String, SDValue> e : r.getValueOutputs().entrySet()) res.put(e.getKey(), e.getValue().getTensorValue());
        } else {
            res = ExecutionResult.unpack(r.getOutputs());
        }
        Map<String, INDArray> outs = new HashMap<>();
        for (String o : outputs) outs.put(o, res.get(o));
        Map<String, INDArray> grads = new HashMap<>();
        for (String w : wrt) {
            SDVariable g = sd.getVariable(w).getGradient();
            if (g != null) grads.put(w, res.get(g.name()));
        }
        SessionMemory.paceCollections();
        return new OutAndGrad(outs, grads);
    }

    private static final java.lang.reflect.Method BATCH_OUTPUT;

    /** {@code -Dsamediffpy.stockGradients=true}: M2.1's own calculateGradientsAndOutputs (cache off), to compare. */
    private static final boolean STOCK_GRADIENTS = Boolean.getBoolean("samediffpy.stockGradients");

    static {
        try {
            BATCH_OUTPUT = SameDiff.class.getDeclaredMethod("batchOutputHelper", Map.class, List.class, Operation.class,
                    String[].class);
            BATCH_OUTPUT.setAccessible(true);
        } catch (NoSuchMethodException e) {
            throw new IllegalStateException("SameDiff.batchOutputHelper not found: not nd4j 1.0.0-M2.1?", e);
        }
    }

    /** Gradients w.r.t. each named node, from the function set by {@link #defineGradients}; null = none. */
    public static INDArray[] gradients(SameDiff sd, String[] feedNames, INDArray[] feeds, String[] wrt) {
        Map<String, INDArray> res = gradientsAndOutputs(sd, feedMap(feedNames, feeds), new ArrayList<String>(),
                java.util.Arrays.asList(wrt)).getGradients();
        INDArray[] out = new INDArray[wrt.length];
        for (int i = 0; i < wrt.length; i++) {
            INDArray g = res.get(wrt[i]);
            out[i] = g == null ? null : detached(g);
        }
        return out;
    }
}
