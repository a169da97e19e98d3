package samediffpy;

import java.lang.reflect.Field;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

import org.nd4j.autodiff.samediff.SDVariable;
import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.imports.converters.DifferentialFunctionClassHolder;
import org.nd4j.linalg.api.ops.DynamicCustomOp;
import org.nd4j.linalg.api.ops.custom.DivideNoNan;
import org.nd4j.linalg.api.ops.impl.controlflow.Select;
import org.nd4j.linalg.api.ops.impl.scalar.RectifiedLinear;
import org.nd4j.linalg.api.ops.impl.scalar.Step;
import org.nd4j.autodiff.samediff.internal.SameDiffOp;
import org.nd4j.autodiff.functions.DifferentialFunction;
import org.nd4j.linalg.api.ops.impl.loss.SparseSoftmaxCrossEntropyLossWithLogits;
import org.nd4j.linalg.api.ops.impl.loss.bp.SparseSoftmaxCrossEntropyLossWithLogitsBp;
import org.nd4j.linalg.api.ops.impl.shape.Gather;
import org.nd4j.linalg.api.buffer.DataType;
import org.nd4j.linalg.factory.Nd4j;

/**
 * Ops whose M2.1 gradient is missing or wrong, fixed for the whole JVM.
 *
 * SameDiff clones every op through FlatBuffers when it builds a gradient function, and the clone is looked up
 * by the libnd4j op hash, so a plain subclass would come back as the stock class. {@link #register()} maps each
 * op's hash to the subclass in {@code DifferentialFunctionClassHolder}: from then on every op of that name that
 * SameDiff builds, clones or loads in this JVM uses the fixed gradient. The subclasses keep the stock op name,
 * so saved files hold plain DL4J ops that any M2.1 program loads and runs forward.
 */
public final class FixedOps {
    private FixedOps() {}

    private static boolean registered;

    static {
        Nd4j.getBackend();
        register();
    }

    /** Registers every fixed op class (idempotent; the Bridge calls it before any graph exists). */
    public static synchronized void register() {
        if (registered) return;
        put("gather", FixedGather.class);
        put("select", FixedSelect.class);
        put("sparse_softmax_cross_entropy_loss_with_logits", FixedSparseSoftmaxCrossEntropy.class);
        put("lstmLayer", Sequences.FixedLstm.class);  // masked LSTM: gradient with lengths, loadable files
        put("cumsum", Sequences.FixedCumSum.class);
        put("relu", Relu.class);
        put("conv1d", Sequences.FastConv1D.class);  // the same op; no input gradient over data
        put("divide_no_nan", ZeroPadded.class);  // masks' zeroing: an exact gradient where the divisor is 0
        registered = true;
    }

    @SuppressWarnings("unchecked")
    private static void put(String opName, Class<?> cls) {
        long hash = Nd4j.getExecutioner().getCustomOperations().get(opName).getHash();
        try {
            DifferentialFunctionClassHolder holder = DifferentialFunctionClassHolder.getInstance();
            Field one = DifferentialFunctionClassHolder.class.getDeclaredField("customOpHashToClass");
            Field many = DifferentialFunctionClassHolder.class.getDeclaredField("customOpHashToClasses");
            one.setAccessible(true);
            many.setAccessible(true);
            Map<Long, Class<?>> byHash = (Map<Long, Class<?>>) one.get(holder);
            Map<Long, Map<String, Class<?>>> byHashAndName = (Map<Long, Map<String, Class<?>>>) many.get(holder);
            byHash.put(hash, cls);
            if (byHashAndName.containsKey(hash)) byHashAndName.get(hash).put(opName, cls);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot register the fixed gradient of '" + opName + "'", e);
        }
    }

    /** Whether the op class SameDiff will instantiate for {@code opName} is our fixed one (tests check this). */
    public static String classFor(String opName) {
        long hash = Nd4j.getExecutioner().getCustomOperations().get(opName).getHash();
        return DifferentialFunctionClassHolder.getInstance().customOpClassForHashAndName(hash, opName).getName();
    }

    /** The Java class of every op named {@code opName} in {@code sd} (tests check which class runs). */
    public static String[] opClasses(SameDiff sd, String opName) {
        List<String> out = new java.util.ArrayList<>();
        for (SameDiffOp op : sd.getOps().values()) {
            if (opName.equals(op.getOp().opName())) out.add(op.getOp().getClass().getName());
        }
        return out.toArray(new String[0]);
    }

    /** The integer arguments of every gather op of {@code sd}, comma-separated (tests check the markers). */
    public static String[] gatherArgs(SameDiff sd) {
        List<String> out = new java.util.ArrayList<>();
        for (org.nd4j.autodiff.samediff.internal.SameDiffOp op : sd.getOps().values()) {
            if (op.getOp() instanceof Gather) {
                StringBuilder b = new StringBuilder();
                for (long a : ((Gather) op.getOp()).iArgs()) b.append(b.length() == 0 ? "" : ",").append(a);
                out.add(b.toString());
            }
        }
        return out.toArray(new String[0]);
    }

    /**
     * {@code gather} along axis 0 with a correct gradient: the table's gradient sums the upstream rows of
     * every occurrence of an id ({@code scatter_add} into zeros); M2.1's overwrote rows, read the wrong upstream
     * row, and threw for ids >= the number of ids. Other axes keep the stock gradient.
     */
    public static class FixedGather extends Gather {
        public FixedGather() {}

        public FixedGather(SameDiff sd, SDVariable table, SDVariable ids, int axis) {
            super(sd, table, ids, axis);
        }

        /**
         * A row gather whose index has a known structure: for {@code k = offsets.length}, a table of
         * {@code n + 1} rows and {@code ids} of length {@code n * k}, {@code ids[p*k + j]} is
         * {@code p + offsets[j]} or {@code n} (the filler row), as the masked ops build them (a mask's row index:
         * k = 1, offset 0; k > 1: a convolution's taps, which masked.conv1d no longer builds but models saved
         * with its earlier version hold: kept so they load and train; tested). Each table row but the filler is
         * then read at most once per j,
         * so the gradient is ONE gather of the upstream rows by the inverse index (and a sum over j) instead of a
         * scatter-add (libnd4j's costs ~1 us per row: 4.5 ms for 4096 rows of 128, 9 ms for a k = 3 tap gather
         * at [32, 128, 128]). The promise travels in the op's integer arguments after the axis
         * ({@link #SHIFTED}, k, offsets...), which survive SameDiff's cloning and saving and which libnd4j's gather
         * does not read when the index is an input (plain DL4J loads and runs such files forward: tested).
         */
        public FixedGather(SameDiff sd, SDVariable table, SDVariable ids, long[] offsets) {
            super(sd, table, ids, 0);
            addIArgument(SHIFTED, offsets.length);
            addIArgument(offsets);
        }

        @Override
        public List<SDVariable> doDiff(List<SDVariable> grads) {
            if (jaxis != 0 || args().length != 2) return super.doDiff(grads);
            long[] ia = iArgs();
            if (ia.length >= 3 && ia[1] == SHIFTED && ia.length == 3 + ia[2]) {
                long[] offsets = Arrays.copyOfRange(ia, 3, ia.length);
                return Arrays.asList(shiftedTableGradient(sameDiff, arg(0), arg(1), grads.get(0), offsets));
            }
            SameDiff sd = sameDiff;
            SDVariable table = arg(0);
            SDVariable ids = arg(1);
            SDVariable g = grads.get(0);
            // [ids..., rest...] -> [n, rest...]: rows of the upstream gradient, one per id, added into zeros of
            // the table's shape at their ids (scatter_add accumulates repeated ids). Not unsorted_segment_sum:
            // that op leaks native memory on every execution in M2.1 (~1 MB per step for [2048, 32] rows,
            // bench/FINDINGS.md), and takes a [1, d] input (a single id) for a vector.
            SDVariable tableShape = sd.shape(table);
            SDVariable rest = sd.stridedSlice(tableShape, new long[]{1}, new long[]{0}, new long[]{1}, 0, 1, 0, 0, 0);
            SDVariable minusOne = sd.constant(Nd4j.createFromArray(new long[]{-1}).castTo(tableShape.dataType()));
            SDVariable rows = sd.reshape(g, sd.concat(0, minusOne, rest));
            SDVariable flatIds = sd.reshape(ids, -1);
            SDVariable tableGrad = sd.scatterAdd(sd.zerosLike(table), flatIds, rows);
            return Arrays.asList(tableGrad, sd.zerosLike(ids));
        }
    }

    /** The marker of a shifted row gather in its integer arguments ({@link FixedGather}). */
    static final long SHIFTED = 7_530_000_001L;

    /**
     * The table gradient of a structured row gather (see {@link FixedGather}): table row {@code r < n} gets
     * {@code sum_j g[p*k + j]} over the taps j whose position {@code p = r - offsets[j]} read it
     * ({@code ids[p*k + j] == r}); the filler row gets 0. The table is {@code [n + 1, F]} and ids a vector (as
     * {@link Sequences#gatherRows} and {@link Sequences#gatherRowsShifted} build them). One gather of
     * {@code [g; 0]} by the inverse index {@code [n + 1, k]}, then a sum over k (none for k = 1; for k = 1 and
     * offset 0 the inverse index is {@code ids} itself: one pad and one gather, ~10 fewer op executions per
     * masked zeroing).
     */
    static SDVariable[] shiftedTableGradient(SameDiff sd, SDVariable table, SDVariable ids, SDVariable g,
                                             long[] offsets) {
        int k = offsets.length;
        DataType it = ids.dataType();
        if (k == 1 && offsets[0] == 0) {
            // a mask's row index (each position reads its own row or the filler): the inverse index is ids itself,
            // whose length matches the table's (checked in the forward pass, or guaranteed by the caller:
            // Sequences.gatherRowsShifted). The filler
            // row's gradient is discarded (it is a pad's or a constant's row), so its entry may read row 0.
            SDVariable index = sd.nn().pad(ids, sd.constant(Nd4j.createFromArray(new int[][]{{0, 1}})), 0.0);
            SDVariable picked = sd.gather(Sequences.withFillerRow(sd, g, 0.0), index, 0);     // [n + 1, F]
            return new SDVariable[]{picked, sd.zerosLike(ids)};
        }
        // n from the TABLE (its rows but the filler), and ids reshaped to [n, k]: ids of any other length fail
        // here with an error instead of indexing past the upstream rows (reading and writing out of bounds)
        SDVariable nLong = sd.castTo(sd.sizeAt(table, 0), DataType.LONG).sub(1);
        SDVariable nk = sd.concat(0, sd.reshape(nLong, 1), sd.constant(Nd4j.createFromArray(new long[]{k})));
        SDVariable ids2 = sd.reshape(ids, nk);                                                   // [n, k]
        SDVariable m = sd.castTo(nLong.mul(k), it);                                              // n * k
        long[] taps = new long[k];
        for (int j = 0; j < k; j++) taps[j] = j;
        SDVariable kk = sd.constant(Nd4j.scalar(it, k));
        SDVariable one = sd.constant(Nd4j.scalar(it, 1));
        SDVariable n = sd.castTo(nLong, it);
        SDVariable r = sd.expandDims(sd.range(sd.constant(Nd4j.scalar(it, 0)), n, one, it), 1);  // [n, 1]
        SDVariable o = sd.constant(Nd4j.createFromArray(offsets).castTo(it).reshape(1, k));
        SDVariable q = r.sub(o).mul(kk).add(sd.constant(Nd4j.createFromArray(taps).castTo(it).reshape(1, k)));
        // tap j of position p read a real row iff ids[p*k + j] != n; row r = p + o_j was read by tap j iff
        // that holds at p = r - o_j: column j shifted by o_j (zero-padded: positions outside the table)
        SDVariable valid = sd.castTo(sd.neq(ids2, n), DataType.FLOAT);                        // [n, k]
        long pad = 0;
        for (long off : offsets) pad = Math.max(pad, Math.abs(off));
        SDVariable vp = sd.nn().pad(valid, sd.constant(Nd4j.createFromArray(new long[][]{{pad, pad}, {0, 0}})), 0.0);
        SDVariable size = sd.concat(0, sd.reshape(sd.castTo(n, DataType.LONG), 1),
                sd.constant(Nd4j.createFromArray(new long[]{1})));
        SDVariable[] cols = new SDVariable[k];
        for (int j = 0; j < k; j++) {
            cols[j] = sd.slice(vp, sd.constant(Nd4j.createFromArray(new long[]{pad - offsets[j], j})), size);
        }
        SDVariable ok = sd.castTo(k == 1 ? cols[0] : sd.concat(1, cols), it);                 // [n, k]
        SDVariable inv = sd.reshape(q.mul(ok).add(ok.rsub(1).mul(m)), -1);                      // else m: a zero row
        // the filler row's k entries read the zero row too
        SDVariable filler = sd.constant(Nd4j.zeros(it, k)).add(m);
        SDVariable index = sd.concat(0, inv, filler);                                         // [(n + 1) * k]
        // [g; 0]: g is [m, F] (a structured gather's table is [n + 1, F] rows and its index a vector, as
        // Sequences.gatherRows* build them), so a pad (libnd4j's copies ~3x faster than its concat)
        SDVariable ext = Sequences.withFillerRow(sd, g, 0.0);
        SDVariable picked = sd.gather(ext, index, 0);                                         // [(n + 1) * k, F...]
        if (k == 1) return new SDVariable[]{picked, sd.zerosLike(ids)};
        SDVariable shape = sd.shape(g);
        SDVariable rest = sd.stridedSlice(shape, new long[]{1}, new long[]{0}, new long[]{1}, 0, 1, 0, 0, 0);
        SDVariable kShape = sd.constant(Nd4j.createFromArray(new long[]{-1, k}).castTo(shape.dataType()));
        SDVariable perTap = sd.reshape(picked, sd.concat(0, kShape, rest));                 // [n + 1, k, F...]
        return new SDVariable[]{perTap.sum(1), sd.zerosLike(ids)};
    }

    /**
     * {@code select(cond, x, y)} (elementwise, same shapes) with a gradient: {@code select(cond, g, 0)} to x and
     * {@code select(cond, 0, g)} to y. M2.1 has none. It is what lets masked ops SELECT valid positions instead
     * of multiplying by the mask (NaN * 0 is NaN; inf * 0 is NaN).
     */
    public static class FixedSelect extends Select {
        public FixedSelect() {}

        public FixedSelect(SameDiff sd, SDVariable[] args) {
            super(sd, args);
        }

        @Override
        public List<SDVariable> doDiff(List<SDVariable> grads) {
            SameDiff sd = sameDiff;
            SDVariable cond = arg(0);
            SDVariable g = grads.get(0);
            SDVariable zeros = sd.zerosLike(g);
            SDVariable dx = new Select(sd, new SDVariable[]{cond, g, zeros}).outputVariable();
            SDVariable dy = new Select(sd, new SDVariable[]{cond, zeros, g}).outputVariable();
            return Arrays.asList(sd.zerosLike(cond), dx, dy);
        }
    }

    /**
     * {@code sparse_softmax_cross_entropy_loss_with_logits(labels [...], logits [..., classes]) -> [...]}, the
     * per-position loss {@code -log softmax(logits)[label]}, with a gradient that honours the upstream gradient:
     * the op's own backward output (softmax - one-hot, per position) times the upstream gradient expanded over
     * the class axis. M2.1's gradient is the backward output alone (the gradient of the SUM of all positions,
     * whatever consumes the loss), so the loss could not be masked, weighted, averaged or combined. Labels must
     * lie in [0, classes) everywhere (libnd4j does not check): callers replace ignored labels first.
     */
    public static class FixedSparseSoftmaxCrossEntropy extends SparseSoftmaxCrossEntropyLossWithLogits {
        public FixedSparseSoftmaxCrossEntropy() {}

        public FixedSparseSoftmaxCrossEntropy(SameDiff sd, SDVariable logits, SDVariable labels) {
            super(sd, logits, labels);
        }

        @Override
        public List<SDVariable> doDiff(List<SDVariable> grads) {
            SameDiff sd = sameDiff;
            SDVariable labels = arg(0);
            SDVariable logits = arg(1);
            SDVariable g = grads.get(0);
            SDVariable bp = new SparseSoftmaxCrossEntropyLossWithLogitsBp(sd, logits, labels).outputVariable();
            // [...] -> [..., 1] by reshape to shape(g) ++ [1]: M2.1's expandDims returns a [1, 1] input unchanged
            SDVariable shape = sd.shape(g);
            SDVariable one = sd.constant(Nd4j.createFromArray(new long[]{1}).castTo(shape.dataType()));
            SDVariable gx = sd.reshape(g, sd.concat(0, shape, one));
            return Arrays.asList(sd.zerosLike(labels), bp.mul(gx));
        }
    }

    /** Builds a sparse softmax cross-entropy (per position, unreduced) with the fixed class. */
    public static SDVariable sparseSoftmaxCrossEntropy(SameDiff sd, String name, SDVariable logits,
                                                       SDVariable labels) {
        SDVariable out = new FixedSparseSoftmaxCrossEntropy(sd, logits, labels).outputVariable();
        return sd.updateVariableNameAndReference(out, name);
    }

    /** Builds a select with the fixed class (the same op libnd4j runs; only the gradient differs). */
    public static SDVariable select(SameDiff sd, String name, SDVariable cond, SDVariable x, SDVariable y) {
        SDVariable out = new FixedSelect(sd, new SDVariable[]{cond, x, y}).outputVariable();
        return sd.updateVariableNameAndReference(out, name);
    }

    /**
     * libnd4j's custom {@code relu} op ({@code max(x, 0)}; NaN stays NaN) with the gradient {@code g * step(x)}
     * (1 where x > 0, else 0). DL4J's own relu is the legacy scalar op, whose gradient ({@code thresholdedrelu_bp})
     * takes 5.7 ms for a {@code [4096, 128]} float32 array against ~0.2 ms here.
     */
    public static class Relu extends DynamicCustomOp {
        public Relu() {}

        public Relu(SameDiff sd, SDVariable x) {
            super(null, sd, new SDVariable[]{x});
            addTArgument(0.0);
        }

        @Override
        public String opName() {
            return "relu";
        }

        @Override
        public List<DataType> calculateOutputDataTypes(List<DataType> in) {
            return java.util.Collections.singletonList(in.get(0));
        }

        @Override
        public List<SDVariable> doDiff(List<SDVariable> grads) {
            SDVariable step = new Step(sameDiff, arg(), 0.0).outputVariable();
            return java.util.Collections.singletonList(grads.get(0).mul(step));
        }
    }

    /** Builds a relu with {@link Relu}. */
    public static SDVariable relu(SameDiff sd, String name, SDVariable x) {
        return sd.updateVariableNameAndReference(new Relu(sd, x).outputVariable(), name);
    }

    /**
     * For saving: every {@link Relu} of {@code sd} becomes DL4J's legacy relu op (the same libnd4j forward, cutoff
     * 0), which plain DL4J loads (it maps the custom {@code relu} op's hash to that legacy class and fails);
     * each swap is appended to {@code swapped} as it is made, for {@link #restoreRelus}.
     * {@link #reluAfterLoading} undoes it in a loaded graph.
     */
    static void legacyRelus(SameDiff sd, List<Object[]> swapped) {
        for (SameDiffOp op : sd.getOps().values()) {
            if (!(op.getOp() instanceof Relu)) continue;
            RectifiedLinear legacy = new RectifiedLinear();
            legacy.setSameDiff(sd);
            legacy.setOwnName(op.getName());
            legacy.setScalar(Nd4j.scalar(sd.getVariable(op.getInputsToOp().get(0)).dataType(), 0.0));
            swapped.add(new Object[]{op, op.getOp()});
            op.setOp(legacy);
        }
    }

    /** Puts back what {@link #legacyRelus} swapped. */
    static void restoreRelus(List<Object[]> swapped) {
        for (Object[] s : swapped) ((SameDiffOp) s[0]).setOp((DifferentialFunction) s[1]);
    }

    /** In a loaded graph: every legacy relu with cutoff 0 becomes a {@link Relu} (same forward, fast gradient). */
    static void reluAfterLoading(SameDiff sd) {
        for (SameDiffOp op : sd.getOps().values()) {
            DifferentialFunction f = op.getOp();
            if (f == null || f.getClass() != RectifiedLinear.class) continue;
            org.nd4j.linalg.api.ndarray.INDArray cut = ((RectifiedLinear) f).scalar();
            if (cut == null || cut.getDouble(0) != 0.0) continue;
            Relu r = new Relu();
            r.setSameDiff(sd);
            r.setOwnName(op.getName());
            r.addTArgument(0.0);
            op.setOp(r);
        }
    }

    /**
     * {@code divide_no_nan(x, valid)}: x / valid where valid != 0, exactly 0 where it is 0. With a 0/1 factor
     * broadcast over x's trailing dims (a mask), this is masks' exact zeroing in one elementwise op: x / 1 is x
     * (NaN, inf and -0.0 included; only a signalling NaN comes out quiet), a padded position is +0.0 whatever
     * it held, where {@code x * mask} gives NaN for NaN or inf (libnd4j's select does the same as this, ~100x
     * slower).
     * Ops built by {@link #zeroPadded} carry the integer argument {@link #MASK_FACTOR}; their gradient is
     * {@code divide_no_nan(g, valid)} to x (exactly 0 at padding, even for a NaN upstream) and zeros to the
     * factor (a mask). Any other {@code divide_no_nan} keeps M2.1's gradient (the plain division's, inf where
     * the divisor is 0).
     */
    public static class ZeroPadded extends DivideNoNan {
        public static final long MASK_FACTOR = 1;

        public ZeroPadded() {}

        public ZeroPadded(SameDiff sd, SDVariable x, SDVariable valid) {
            super(sd, x, valid);
            addIArgument(MASK_FACTOR);
        }

        @Override
        public List<SDVariable> doDiff(List<SDVariable> grads) {
            long[] ia = iArgs();
            SDVariable valid = arg(1);
            // a 0/1 mask has no useful derivative, whatever it was computed from (a mask derived from a trainable
            // value through greater/cast would otherwise get M2.1's: g / 0 = inf at every padded position)
            if (ia.length != 1 || ia[0] != MASK_FACTOR) return super.doDiff(grads);
            SDVariable dx = new ZeroPadded(sameDiff, grads.get(0), valid).outputVariable();
            return Arrays.asList(dx, sameDiff.zerosLike(valid));
        }
    }

    /**
     * {@code x} with exact zeros where {@code valid} (0/1, x's dtype, broadcastable to x: a mask reshaped to
     * {@code [batch, time, 1...]}, see {@code Sequences.maskFactor}) is 0; see {@link ZeroPadded}.
     */
    public static SDVariable zeroPadded(SameDiff sd, String name, SDVariable x, SDVariable valid) {
        return sd.updateVariableNameAndReference(new ZeroPadded(sd, x, valid).outputVariable(), name);
    }

    /** Builds a gather along {@code axis} with the fixed class. */
    public static SDVariable gather(SameDiff sd, String name, SDVariable table, SDVariable ids, int axis) {
        SDVariable out = new FixedGather(sd, table, ids, axis).outputVariable();
        return sd.updateVariableNameAndReference(out, name);
    }

}
