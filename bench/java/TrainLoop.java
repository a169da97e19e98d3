import java.io.File;

import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.linalg.api.ndarray.INDArray;
import org.nd4j.linalg.dataset.MultiDataSet;
import org.nd4j.linalg.factory.Nd4j;

/**
 * The plain-Java twin of bench_train.py's Python loop:
 *
 *   java -cp jars/*:jars/classes:. TrainLoop MODEL DATA_DIR N_BATCHES FEATURES WARMUP_EPOCHS EPOCHS MODE
 *
 * loads MODEL (with updater state; samediff_py's loader, see main), batch b's feature f from DATA_DIR/b_f.npy, and
 * runs EPOCHS passes of sd.fit(MultiDataSet) over the batches after WARMUP_EPOCHS. MODE "plain": fit alone, as a
 * Java user writes it; MODE "loss": also records the loss of every step the way samediff_py does
 * (samediffpy.Training.stepArrays).
 * Prints "us_per_step <value>".
 */
public class TrainLoop {
    public static void main(String[] a) throws Exception {
        // samediff_py's loader (SameDiff.fromFlatBuffers after the checksum): it puts back the op classes a save
        // swaps out (FixedOps.Relu), so this is the graph the Python loop trains, not DL4J's slower legacy relu
        SameDiff sd = samediffpy.Training.load(a[0], true);
        int n = Integer.parseInt(a[2]);
        String[] feats = a[3].split(",");
        int warm = Integer.parseInt(a[4]), epochs = Integer.parseInt(a[5]);
        boolean loss = a[6].equals("loss");
        MultiDataSet[] batches = new MultiDataSet[n];
        INDArray[][] arrays = new INDArray[n][];
        for (int b = 0; b < n; b++) {
            arrays[b] = new INDArray[feats.length];
            for (int f = 0; f < feats.length; f++) {
                arrays[b][f] = Nd4j.createFromNpyFile(new File(a[1], b + "_" + feats[f].replace("/", "__") + ".npy"));
            }
            batches[b] = new MultiDataSet(arrays[b], new INDArray[0]);
        }
        samediffpy.Training.Session s = null;
        if (loss) {
            String lossName = sd.getLossVariables().get(0);
            s = samediffpy.Training.session(sd, lossName, feats, "adam", new double[6], 0, 0, true);
        }
        long t0 = 0;
        double sink = 0;
        for (int e = 0; e < warm + epochs; e++) {
            if (e == warm) t0 = System.nanoTime();
            for (int b = 0; b < n; b++) {
                if (loss) sink += samediffpy.Training.stepArrays(s, arrays[b]);
                else sd.fit(batches[b]);
            }
        }
        double us = (System.nanoTime() - t0) / 1e3 / ((double) epochs * n);
        System.out.println("us_per_step " + us + " sink " + sink);
    }
}
