package samediffpy;

import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Map;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.zip.CRC32C;

import org.nd4j.graph.FlatGraph;
import org.nd4j.graph.FlatVariable;

import org.nd4j.autodiff.listeners.At;
import org.nd4j.autodiff.listeners.BaseListener;
import org.nd4j.autodiff.listeners.Operation;
import org.nd4j.autodiff.samediff.SDVariable;
import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.autodiff.samediff.TrainingConfig;
import org.nd4j.autodiff.samediff.VariableType;
import org.nd4j.autodiff.samediff.internal.SameDiffOp;
import org.nd4j.autodiff.samediff.internal.Variable;
import org.nd4j.evaluation.IEvaluation;
import org.nd4j.linalg.api.buffer.DataType;
import org.nd4j.linalg.api.ndarray.INDArray;
import org.nd4j.linalg.api.ops.OpContext;
import org.nd4j.linalg.dataset.MultiDataSet;
import org.nd4j.linalg.factory.Nd4j;
import org.nd4j.autodiff.samediff.api.OutAndGrad;
import org.nd4j.linalg.learning.GradientUpdater;
import org.nd4j.linalg.learning.config.Adam;
import org.nd4j.linalg.learning.regularization.Regularization;
import org.nd4j.linalg.learning.config.IUpdater;
import org.nd4j.linalg.learning.config.Nesterovs;
import org.nd4j.linalg.learning.config.RmsProp;
import org.nd4j.linalg.learning.config.Sgd;

/**
 * Training entry points for samediff_py (train.py). Every public method has exactly one signature.
 *
 * One training step is one call: {@link #step} wraps the numpy feed buffers (no copy), runs
 * {@code sd.fit(MultiDataSet)} and returns the loss value that the step's own forward pass produced
 * (recorded by {@link LossRecorder}), i.e. the loss at the weights before the update.
 */
public final class Training {
    private Training() {}

    /** Name of the UTF-8 constant that carries samediff_py's JSON metadata inside the FlatBuffers file. */
    public static final String META = "samediff_py.meta";

    /**
     * Records the value of one variable each time an op produces it during training. M2.1's own loss
     * reporting (History / Loss) can be stuck at 0, so this reads the real activation.
     */
    public static final class LossRecorder extends BaseListener {
        private final String loss;
        private double value = Double.NaN;

        public LossRecorder(String loss) {
            this.loss = loss;
        }

        @Override
        public boolean isActive(Operation operation) {
            return operation == Operation.TRAINING;
        }

        @Override
        public void opExecution(SameDiff sd, At at, org.nd4j.linalg.dataset.api.MultiDataSet batch, SameDiffOp op,
                                OpContext opContext, INDArray[] outputs) {
            List<String> outs = op.getOutputsOfOp();
            for (int i = 0; i < outs.size() && i < outputs.length; i++) {
                if (loss.equals(outs.get(i))) {
                    value = outputs[i].sumNumber().doubleValue();
                }
            }
        }
    }

    /** One trainer's state on the JVM: the graph, feed order/dtypes and the loss recorder. */
    public static final class Session {
        final SameDiff sd;
        final String[] features;
        final DataType[] dtypes;
        final String loss;
        final LossRecorder recorder;
        final TrainingConfig config;
        /** Trainable float variables, in graph order: the order of {@link #grads} and of flat gradients. */
        final String[] params;
        /** Gradients of the last {@link #computeGradients} call (null entries: the loss does not depend on it). */
        final INDArray[] grads;
        double lastLoss = Double.NaN;
        /** Scalars computed in the same forward pass as the loss (e.g. the count a masked loss averages over). */
        String[] extras = new String[0];
        double[] lastExtras = new double[0];

        Session(SameDiff sd, String[] features, String loss) {
            this.sd = sd;
            this.config = sd.getTrainingConfig();
            this.features = features;
            this.loss = loss;
            this.dtypes = new DataType[features.length];
            for (int i = 0; i < features.length; i++) dtypes[i] = sd.getVariable(features[i]).dataType();
            this.recorder = new LossRecorder(loss);
            List<String> ps = new ArrayList<>();
            for (SDVariable v : sd.variables()) {
                if (v.getVariableType() == VariableType.VARIABLE && v.dataType().isFPType()) ps.add(v.name());
            }
            this.params = ps.toArray(new String[0]);
            this.grads = new INDArray[params.length];
        }

        /** Names of the trained variables, in the order of flat gradients. */
        public String[] params() {
            return params.clone();
        }

        /** The extra scalars of the last {@link Training#computeGradients}. */
        public double[] extraValues() {
            return lastExtras.clone();
        }

        /** Scalars to compute with every step's loss (returned after it by {@link Training#step}). */
        public void setExtras(String[] names) {
            extras = names.clone();
            lastExtras = new double[names.length];
        }
    }

    /**
     * The updater {@code name} (adam, sgd, nesterov, rmsprop) with hyper-parameters
     * {@code h = {lr, momentum, beta1, beta2, epsilon, rmsDecay}}.
     */
    public static IUpdater updater(String name, double[] h) {
        switch (name) {
            case "adam": return new Adam(h[0], h[2], h[3], h[4]);
            case "sgd": return new Sgd(h[0]);
            case "nesterov": return new Nesterovs(h[0], h[1]);
            case "rmsprop": return new RmsProp(h[0], h[5], h[4]);
            default: throw new IllegalArgumentException("unknown updater " + name);
        }
    }

    /**
     * A training session. If {@code reuseConfig} and the graph already has a TrainingConfig (e.g. loaded with
     * its updater state), that config and state are kept; otherwise a new config is set (fresh updater state).
     */
    public static Session session(SameDiff sd, String loss, String[] features, String updater, double[] hyper,
                                  double l2, double weightDecay, boolean reuseConfig) {
        TrainingConfig old = sd.getTrainingConfig();
        if (!(reuseConfig && old != null)) {
            TrainingConfig.Builder b = new TrainingConfig.Builder()
                    .updater(updater(updater, hyper))
                    .dataSetFeatureMapping(features)
                    .markLabelsUnused();
            if (l2 > 0) b.l2(l2);
            if (weightDecay > 0) b.weightDecay(weightDecay, true);
            sd.setTrainingConfig(b.build());
            resetUpdaters(sd);
        } else if (!old.getDataSetFeatureMapping().equals(java.util.Arrays.asList(features))) {
            throw new IllegalStateException("the saved TrainingConfig feeds " + old.getDataSetFeatureMapping()
                    + " but this loss needs " + java.util.Arrays.asList(features));
        }
        requireDuringTraining(sd.getTrainingConfig(), loss);
        return new Session(sd, features, loss);
    }

    /**
     * M2.1's training pass computes only what the gradients need, and the loss op itself is not needed (the
     * gradient of mean/sum does not read its output), so its value never exists; listeners' requiredVariables
     * are collected but not passed on. The one hook TrainingSession honours is the key set of the config's
     * train evaluations: registering the loss there with no evaluations makes the pass compute it (one extra
     * op) without evaluating anything. The matching label index keeps HistoryListener's check happy; it is
     * never read because fit(MultiDataSet) does not start an epoch.
     */
    static void requireDuringTraining(TrainingConfig c, String loss) {
        if (c.getTrainEvaluations() == null) c.setTrainEvaluations(new HashMap<>());
        if (c.getTrainEvaluationLabels() == null) c.setTrainEvaluationLabels(new HashMap<>());
        c.getTrainEvaluations().putIfAbsent(loss, new ArrayList<>());
        c.getTrainEvaluationLabels().putIfAbsent(loss, 0);
    }

    /** Undoes {@link #requireDuringTraining} for entries without evaluations (before saving). */
    static List<String> releaseDuringTraining(TrainingConfig c) {
        List<String> removed = new ArrayList<>();
        if (c == null || c.getTrainEvaluations() == null) return removed;
        for (String k : new ArrayList<>(c.getTrainEvaluations().keySet())) {
            List<IEvaluation> evals = c.getTrainEvaluations().get(k);
            if (evals == null || evals.isEmpty()) {
                c.getTrainEvaluations().remove(k);
                if (c.getTrainEvaluationLabels() != null) c.getTrainEvaluationLabels().remove(k);
                removed.add(k);
            }
        }
        return removed;
    }

    /**
     * One training step on feeds given as C-contiguous native buffers (numpy memory, not copied):
     * {@code addresses[i]} is feed i's first byte; {@code shapes} holds, per feed, its rank then its dims.
     * Returns the loss the step's forward pass produced (before the update); NaN if it was not seen.
     */
    /**
     * One training step: {@link #computeGradients}, then {@link #applyGradients} if the loss and every
     * gradient are finite. Returns {loss, -1 if applied else the culprit (see {@link #firstNonFiniteGradient}),
     * the session's extra scalars...}.
     */
    public static double[] step(Session s, long[] addresses, long[] shapes) {
        double loss = computeGradients(s, addresses, shapes);
        int bad = firstNonFiniteGradient(s, loss);
        if (bad < 0) applyGradients(s);
        double[] out = new double[2 + s.extras.length];
        out[0] = loss;
        out[1] = bad;
        System.arraycopy(s.lastExtras, 0, out, 2, s.extras.length);
        return out;
    }

    static INDArray[] wrapFeeds(Session s, long[] addresses, long[] shapes) {
        INDArray[] feats = new INDArray[s.features.length];
        int p = 0;
        for (int i = 0; i < feats.length; i++) {
            int rank = (int) shapes[p++];
            long[] shape = new long[rank];
            for (int d = 0; d < rank; d++) shape[d] = shapes[p++];
            feats[i] = Bridge.wrap(addresses[i], s.dtypes[i], shape);
        }
        return feats;
    }

    /**
     * Phase one of a training step: the loss and the gradient of every trained variable at the current
     * weights, kept in the session (nothing is updated). Returns the loss.
     */
    public static double computeGradients(Session s, long[] addresses, long[] shapes) {
        return computeGradientsArrays(s, wrapFeeds(s, addresses, shapes));
    }

    /** {@link #computeGradients} with INDArray feeds (plain-Java callers). */
    public static double computeGradientsArrays(Session s, INDArray[] feats) {
        requireCurrent(s);
        Map<String, INDArray> ph = new HashMap<>();
        for (int i = 0; i < feats.length; i++) ph.put(s.features[i], feats[i]);
        List<String> outs = new ArrayList<>();
        outs.add(s.loss);
        Collections.addAll(outs, s.extras);
        // with the session array cache on (M2.1's own version turns it off: memory grows to the off-heap limit)
        OutAndGrad og = Bridge.gradientsAndOutputs(s.sd, ph, outs, Arrays.asList(s.params));
        INDArray l = og.getOutputs().get(s.loss);
        s.lastLoss = l.isScalar() ? l.getDouble(0) : l.sumNumber().doubleValue();
        for (int i = 0; i < s.extras.length; i++) {
            s.lastExtras[i] = og.getOutputs().get(s.extras[i]).sumNumber().doubleValue();
        }
        Map<String, INDArray> g = og.getGradients();
        for (int i = 0; i < s.params.length; i++) {
            INDArray a = g.get(s.params[i]);
            s.grads[i] = a == null ? null : Bridge.detached(a);
        }
        return s.lastLoss;
    }

    /**
     * -1 if the loss and every gradient of the session are finite; else the index of the first parameter whose
     * gradient is not, or {@code params.length} for the loss itself.
     */
    public static int firstNonFiniteGradient(Session s, double loss) {
        if (!Double.isFinite(loss)) return s.params.length;
        for (int i = 0; i < s.grads.length; i++) {
            INDArray g = s.grads[i];
            if (g != null && !Double.isFinite(g.sumNumber().doubleValue())) return i;  // sums NaN/inf through
        }
        return -1;
    }

    /**
     * Phase two: applies the session's gradients exactly as M2.1's TrainingSession does inside fit (L1/L2
     * before the updater, the updater with the current iteration and epoch, weight decay after it, then
     * param -= update) and counts the iteration. With a learning rate of exactly 0 the updater state still
     * advances but the parameters are not touched (M2.1's Adam moves weights by ~epsilon-sized steps at lr 0).
     */
    public static void applyGradients(Session s) {
        requireCurrent(s);
        SameDiff sd = s.sd;
        TrainingConfig c = sd.getTrainingConfig();
        ensureUpdaters(sd);
        int it = c.getIterationCount();
        int ep = c.getEpochCount();
        double lr = c.getUpdater().hasLearningRate() ? c.getUpdater().getLearningRate(it, ep) : 1.0;
        List<Regularization> regs = c.getRegularization();
        for (int i = 0; i < s.params.length; i++) {
            INDArray grad = s.grads[i];
            if (grad == null) continue;
            INDArray param = sd.getVariable(s.params[i]).getArr();
            GradientUpdater u = sd.getUpdaterMap().get(s.params[i]);
            if (regs != null) {
                for (Regularization r : regs) {
                    if (r.applyStep() == Regularization.ApplyStep.BEFORE_UPDATER) r.apply(param, grad, lr, it, ep);
                }
            }
            u.applyUpdater(grad, it, ep);
            if (regs != null) {
                for (Regularization r : regs) {
                    if (r.applyStep() == Regularization.ApplyStep.POST_UPDATER) r.apply(param, grad, lr, it, ep);
                }
            }
            if (lr != 0.0) {
                if (c.isMinimize()) param.subi(grad);
                else param.addi(grad);
            }
            s.grads[i] = null;
        }
        c.incrementIterationCount();
    }

    /** Number of elements of all trained variables (the length of a flat gradient). */
    public static long flatSize(Session s) {
        long n = 0;
        for (String p : s.params) n += s.sd.getVariable(p).getArr().length();
        return n;
    }

    /**
     * Copies the session's gradients (from {@link #computeGradients}), in {@code params} order, into the native
     * buffer at {@code address} (flatSize elements of {@code dtype}); a variable the loss does not reach
     * contributes zeros. One memory copy per variable, no Java arrays.
     */
    public static void packGradients(Session s, long address, DataType dtype) {
        long offset = 0;
        for (int i = 0; i < s.params.length; i++) {
            INDArray param = s.sd.getVariable(s.params[i]).getArr();
            long n = param.length();
            INDArray dst = Bridge.wrap(address + offset * dtype.width(), dtype, new long[]{n});
            if (s.grads[i] == null) dst.assign(0);
            else dst.assign(s.grads[i].reshape('c', new long[]{n}));
            offset += n;
        }
    }

    /**
     * Replaces the session's gradients with a flat buffer at {@code address} (e.g. the average of every
     * worker's gradients), ready for {@link #applyGradients}. The buffer is copied.
     */
    public static void unpackGradients(Session s, long address, DataType dtype) {
        long offset = 0;
        for (int i = 0; i < s.params.length; i++) {
            INDArray param = s.sd.getVariable(s.params[i]).getArr();
            long n = param.length();
            INDArray src = Bridge.wrap(address + offset * dtype.width(), dtype, new long[]{n});
            s.grads[i] = src.castTo(param.dataType()).reshape('c', param.shape()).dup('c');
            offset += n;
        }
    }

    /** M2.1 creates the updaters (and their state) lazily inside fit; the two-phase step needs them first. */
    static void ensureUpdaters(SameDiff sd) {
        if (sd.isInitializedTraining() && sd.getUpdaterMap() != null) return;
        try {
            java.lang.reflect.Method m = SameDiff.class.getDeclaredMethod("initializeTraining");
            m.setAccessible(true);
            m.invoke(sd);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot initialise SameDiff's updaters", e);
        }
    }

    /**
     * Forgets the updater state (a new Trainer with another updater or settings: M2.1 would otherwise keep
     * training with the OLD updaters, and save their state under the new config, which load() refuses).
     */
    static void resetUpdaters(SameDiff sd) {
        if (!sd.isInitializedTraining()) return;
        try {
            java.lang.reflect.Field f = SameDiff.class.getDeclaredField("initializedTraining");
            f.setAccessible(true);
            f.setBoolean(sd, false);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot reset SameDiff's updaters", e);
        }
        ensureUpdaters(sd);
    }

    /** The stock one-call step ({@code sd.fit}, updates applied inside the backward pass); tests compare. */
    public static double stepFused(Session s, long[] addresses, long[] shapes) {
        requireCurrent(s);
        INDArray[] feats = wrapFeeds(s, addresses, shapes);
        Bridge.useHelpersFor(s.sd);
        s.recorder.value = Double.NaN;
        s.sd.fit(new MultiDataSet(feats, new INDArray[0]), s.recorder);
        SessionMemory.paceCollections();
        return s.recorder.value;
    }

    /** A graph has one TrainingConfig (updater state, feed order): a later Trainer replaced this one's. */
    static void requireCurrent(Session s) {
        if (s.sd.getTrainingConfig() != s.config) {
            throw new IllegalStateException("this graph is now trained by a Trainer created later (its updater and "
                    + "feeds replaced this one's); use one Trainer per graph");
        }
    }

    /** Same as {@link #step} with INDArray feeds (used by the plain-Java benchmark and tests). */
    public static double stepArrays(Session s, INDArray[] feats) {
        double loss = computeGradientsArrays(s, feats);
        if (firstNonFiniteGradient(s, loss) < 0) applyGradients(s);
        return loss;
    }

    /** Sets the learning rate used from the next step on (shared by every parameter's updater). */
    public static void setLearningRate(SameDiff sd, double lr) {
        sd.getTrainingConfig().getUpdater().setLrAndSchedule(lr, null);
    }

    /** Current learning rate of the graph's updater (NaN without a TrainingConfig). */
    public static double learningRate(SameDiff sd) {
        TrainingConfig c = sd.getTrainingConfig();
        return c == null ? Double.NaN : c.getUpdater().getLearningRate(c.getIterationCount(), c.getEpochCount());
    }

    /** Training iterations done so far (0 without a TrainingConfig). */
    public static long iterationCount(SameDiff sd) {
        TrainingConfig c = sd.getTrainingConfig();
        return c == null ? 0 : c.getIterationCount();
    }

    // ---------------------------------------------------------------- save / load

    /** Footer samediff_py appends after the FlatBuffers bytes: magic, payload length, CRC32C of the payload. */
    static final byte[] FOOTER_MAGIC = "SDPYCRC1".getBytes(StandardCharsets.US_ASCII);
    static final int FOOTER_SIZE = 8 + 8 + 8;

    /**
     * Stores (or replaces) the metadata JSON as a UTF-8 constant named {@link #META}. The old array is removed
     * first: M2.1's array holder "updates" an existing array of the same shape by memcpy, and every UTF-8
     * scalar has the same shape, so a longer string was copied into the old, shorter buffer (garbage in the
     * file, or a crash).
     */
    public static void setMeta(SameDiff sd, String json) {
        INDArray a = Nd4j.create(json);
        if (sd.hasVariable(META)) {
            sd.getConstantArrays().removeArray(META);
            sd.getConstantArrays().setArray(META, a);
        } else {
            sd.constant(META, a);
        }
    }

    /** The metadata JSON, or null if the graph has none (not saved by samediff_py). */
    public static String getMeta(SameDiff sd) {
        if (!sd.hasVariable(META)) return null;
        INDArray a = sd.getVariable(META).getArr();
        if (a == null || a.dataType() != DataType.UTF8) return null;
        return a.getString(0);
    }

    /**
     * Writes the model to {@code path} (a temporary file the caller renames into place) with the metadata
     * {@code metaJson}, appends the checksum footer and forces it to disk. The caller then runs
     * {@link #verifyModel} before the rename.
     */
    public static void writeModel(SameDiff sd, String path, boolean updaterState, String metaJson)
            throws IOException {
        setMeta(sd, metaJson);
        File f = new File(path);
        // The file must train like any DL4J model in plain Java (fit(iterator, epochs) would read label 0 for
        // the loss "evaluation"), so the loss hook is taken out for the save and put back after.
        TrainingConfig c = sd.getTrainingConfig();
        List<String> hooks = releaseDuringTraining(c);
        List<Object[]> relus = new ArrayList<>();
        try {
            FixedOps.legacyRelus(sd, relus);  // plain DL4J loads only its legacy relu
            sd.save(f, updaterState);
        } catch (RuntimeException e) {  // M2.1 wraps the IOException (disk full...): give the OS's reason
            throw new IOException(rootMessage(e), e);
        } finally {
            FixedOps.restoreRelus(relus);
            for (String h : hooks) requireDuringTraining(c, h);
        }
        byte[] payload = Files.readAllBytes(f.toPath());
        try (FileChannel ch = FileChannel.open(f.toPath(), StandardOpenOption.WRITE, StandardOpenOption.APPEND)) {
            ByteBuffer footer = ByteBuffer.allocate(FOOTER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
            footer.put(FOOTER_MAGIC).putLong(payload.length).putLong(crc(payload, payload.length));
            footer.flip();
            while (footer.hasRemaining()) ch.write(footer);
            ch.force(true);
        }
    }

    /** "outer message: ... : root cause message" without repeating wrappers' own text. */
    static String rootMessage(Throwable t) {
        Throwable root = t;
        while (root.getCause() != null && root.getCause() != root) root = root.getCause();
        return root == t ? String.valueOf(t.getMessage()) : t.getMessage() + ": " + root;
    }

    static long crc(byte[] bytes, int length) {
        CRC32C c = new CRC32C();
        c.update(bytes, 0, length);
        return c.getValue();
    }

    /** The FlatBuffers payload of a file, its checksum verified when it carries samediff_py's footer. */
    static ByteBuffer payload(File f) throws IOException {
        byte[] bytes = Files.readAllBytes(f.toPath());
        int n = bytes.length;
        if (n >= FOOTER_SIZE) {
            ByteBuffer tail = ByteBuffer.wrap(bytes, n - FOOTER_SIZE, FOOTER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
            byte[] magic = new byte[8];
            tail.get(magic);
            if (Arrays.equals(magic, FOOTER_MAGIC)) {
                long length = tail.getLong();
                long sum = tail.getLong();
                if (length != n - FOOTER_SIZE) {
                    throw new IOException("corrupt: the checksum footer says " + length + " bytes of model, the file has "
                            + (n - FOOTER_SIZE) + " (truncated or appended to)");
                }
                if (crc(bytes, (int) length) != sum) {
                    throw new IOException("corrupt: checksum mismatch (the file changed after it was written)");
                }
                return ByteBuffer.wrap(bytes, 0, (int) length).slice();
            }
        }
        // No footer: a plain SameDiff file (nothing to verify), unless it is one of ours that lost its footer
        ByteBuffer bb = ByteBuffer.wrap(bytes);
        boolean ours = false;
        try {
            FlatGraph fg = FlatGraph.getRootAsFlatGraph(bb.duplicate());
            for (int i = 0; i < fg.variablesLength() && !ours; i++) ours = META.equals(fg.variables(i).name());
        } catch (RuntimeException e) {
            throw new IOException("corrupt or not a SameDiff model (unreadable FlatBuffers: " + e + ")", e);
        }
        if (ours) {
            throw new IOException("corrupt: a samediff_py checkpoint without its checksum footer (truncated?)");
        }
        return bb;
    }

    /**
     * Re-reads a written file without building a graph: checksum, every variable of {@code sd} present, and
     * the metadata equal to {@code metaJson}. Any difference throws, so a bad file never replaces a good one.
     */
    public static void verifyModel(SameDiff sd, String path, String metaJson) throws IOException {
        ByteBuffer bb = payload(new File(path));
        FlatGraph fg = FlatGraph.getRootAsFlatGraph(bb);
        Set<String> names = new HashSet<>();
        String meta = null;
        for (int i = 0; i < fg.variablesLength(); i++) {
            FlatVariable v = fg.variables(i);
            names.add(v.name());
            if (META.equals(v.name()) && v.ndarray() != null) {
                meta = Nd4j.createFromFlatArray(v.ndarray()).getString(0);
            }
        }
        for (SDVariable v : sd.variables()) {
            if (!names.contains(v.name())) {
                throw new IOException("verification failed: variable " + v.name() + " is missing from the written file");
            }
        }
        if (!metaJson.equals(meta)) {
            throw new IOException("verification failed: the metadata read back differs from what was written ("
                    + (meta == null ? "absent" : meta.length() + " vs " + metaJson.length() + " characters") + ")");
        }
    }

    /** The first trainable variable holding NaN or infinity, or null if all are finite. */
    public static String firstNonFinite(SameDiff sd) {
        for (SDVariable v : sd.variables()) {
            if (v.getVariableType() != VariableType.VARIABLE || !v.dataType().isFPType()) continue;
            INDArray a = v.getArr();
            if (a != null && (a.isNaN().any() || a.isInfinite().any())) return v.name();
        }
        return null;
    }

    /** Loads a model file (its checksum verified first); any failure becomes an IOException with the cause. */
    public static SameDiff load(String path, boolean updaterState) throws IOException {
        ByteBuffer bb = payload(new File(path));
        try {
            SameDiff sd = SameDiff.fromFlatBuffers(bb, updaterState);
            if (sd == null) throw new IOException("SameDiff.fromFlatBuffers returned null");
            FixedOps.reluAfterLoading(sd);
            return sd;
        } catch (IOException e) {
            throw e;
        } catch (Throwable t) {  // corrupt files throw IndexOutOfBounds, IllegalArgument, NPE...
            throw new IOException(t.getClass().getName() + ": " + t.getMessage(), t);
        }
    }

    /**
     * One row per variable: {@code name \t kind \t dtype \t shape(comma sep, -1 unknown, "" scalar, "?" unknown
     * rank) \t inputs of its producing op (comma sep)}.
     */
    public static String[] describe(SameDiff sd) {
        List<String> rows = new ArrayList<>();
        for (SDVariable v : sd.variables()) {
            String name = v.name();
            if (META.equals(name)) continue;
            VariableType t = v.getVariableType();
            StringBuilder shape = new StringBuilder();
            long[] sh = null;
            if (t == VariableType.VARIABLE || t == VariableType.CONSTANT) {
                INDArray a = v.getArr();
                if (a != null) sh = a.shape();
            } else if (t == VariableType.PLACEHOLDER) {
                sh = v.placeholderShape();
            }
            if (sh == null) {
                shape.append('?');
            } else {
                for (int i = 0; i < sh.length; i++) {
                    if (i > 0) shape.append(',');
                    shape.append(sh[i]);
                }
            }
            StringBuilder inputs = new StringBuilder();
            Variable meta = sd.getVariables().get(name);
            String opName = meta == null ? null : meta.getOutputOfOp();
            if (opName != null) {
                SameDiffOp op = sd.getOps().get(opName);
                if (op != null && op.getInputsToOp() != null) {
                    for (String in : op.getInputsToOp()) {
                        if (inputs.length() > 0) inputs.append(',');
                        inputs.append(in);
                    }
                }
            }
            rows.add(name + "\t" + t.name() + "\t" + v.dataType().name() + "\t" + shape + "\t" + inputs);
        }
        return rows.toArray(new String[0]);
    }
}
