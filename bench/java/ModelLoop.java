import java.io.File;
import java.util.HashMap;
import java.util.Map;

import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.linalg.api.ndarray.INDArray;
import org.nd4j.linalg.dataset.MultiDataSet;
import org.nd4j.linalg.factory.Nd4j;

/**
 * The plain-Java twin of bench_models.py: the saved MLM encoder, driven from Java over the same batches.
 *
 *   java -cp jars/*:jars/classes:. ModelLoop MODEL DATA_DIR N_BATCHES FEATURES WARMUP REPEAT MODE [OUTPUT]
 *
 * Loads MODEL (with updater state) and batch b's feature f from DATA_DIR/b_f.npy. MODE "train": one
 * training step through samediffpy.Training.stepArrays (sd.fit(MultiDataSet) with the loss recorded, as
 * samediff_py does); "train_plain": bare sd.fit(MultiDataSet); "infer": one sd.output(feeds, OUTPUT) per
 * step. Steps cycle over the batches; WARMUP steps are untimed. Prints "ms_per_step m1 m2 ..." (each step).
 */
public class ModelLoop {
    public static void main(String[] a) throws Exception {
        // samediff_py's loader: it puts back the op classes a save swaps out (FixedOps.Relu)
        System.out.println(run(samediffpy.Training.load(a[0], true), String.join("|", a)));
    }

    /**
     * The loop on a graph already in memory (called through reflection from bench_models.py inside the
     * samediff_py process: M2.1 cannot re-derive gradients for some graphs it loaded from a file, see
     * bench/RESULTS.md). {@code spec} is the command line of {@link #main} joined by '|'. Returns the output line.
     */
    public static String run(Object graph, String spec) throws Exception {
        SameDiff sd = (SameDiff) graph;
        String[] a = spec.split("\\|");
        int n = Integer.parseInt(a[2]);
        String[] feats = a[3].split(",");
        int warm = Integer.parseInt(a[4]), repeat = Integer.parseInt(a[5]);
        boolean train = a[6].startsWith("train"), plain = a[6].equals("train_plain");
        String output = a.length > 7 ? a[7] : null;
        MultiDataSet[] batches = new MultiDataSet[n];
        INDArray[][] arrays = new INDArray[n][];
        @SuppressWarnings("unchecked")
        Map<String, INDArray>[] maps = new Map[n];
        for (int b = 0; b < n; b++) {
            arrays[b] = new INDArray[feats.length];
            maps[b] = new HashMap<>();
            for (int f = 0; f < feats.length; f++) {
                arrays[b][f] = Nd4j.createFromNpyFile(new File(a[1], b + "_" + feats[f].replace("/", "__") + ".npy"));
                maps[b].put(feats[f], arrays[b][f]);
            }
            batches[b] = new MultiDataSet(arrays[b], new INDArray[0]);
        }
        samediffpy.Training.Session s = null;
        if (train && !plain) {
            s = samediffpy.Training.session(sd, sd.getLossVariables().get(0), feats, "adam", new double[6], 0, 0, true);
        }
        double[] ms = new double[repeat];
        double sink = 0;
        for (int i = 0; i < warm + repeat; i++) {
            int b = i % n;
            long t0 = System.nanoTime();
            if (train && plain) {
                sd.fit(batches[b]);
            } else if (train) {
                sink += samediffpy.Training.stepArrays(s, arrays[b]);
            } else {
                INDArray out = sd.output(maps[b], output).get(output);
                sink += out.getDouble(0);
            }
            if (i >= warm) ms[i - warm] = (System.nanoTime() - t0) / 1e6;
        }
        StringBuilder sb = new StringBuilder("ms_per_step");
        for (double m : ms) sb.append(' ').append(m);
        return sb.append(" sink ").append(sink).toString();
    }
}
