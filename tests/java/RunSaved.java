import java.io.File;
import java.util.HashMap;
import java.util.Map;

import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.linalg.api.ndarray.INDArray;
import org.nd4j.linalg.factory.Nd4j;

/**
 * Plain-Java check that a samediff_py checkpoint is a real DL4J model:
 *
 *   java -cp jars/*:. RunSaved MODEL OUT_DIR OUTPUT[,OUTPUT...] [PLACEHOLDER=FILE.npy ...]
 *
 * loads MODEL with SameDiff.load, feeds each placeholder from its .npy file, and writes each requested
 * output to OUT_DIR/OUTPUT.npy (names with '/' have it replaced by '__'). Prints one line per output.
 */
public class RunSaved {
    public static void main(String[] args) throws Exception {
        SameDiff sd = SameDiff.load(new File(args[0]), false);
        File out = new File(args[1]);
        String[] outputs = args[2].split(",");
        Map<String, INDArray> feeds = new HashMap<>();
        for (int i = 3; i < args.length; i++) {
            int eq = args[i].indexOf('=');
            feeds.put(args[i].substring(0, eq), Nd4j.createFromNpyFile(new File(args[i].substring(eq + 1))));
        }
        Map<String, INDArray> res = sd.output(feeds, outputs);
        for (String o : outputs) {
            INDArray a = res.get(o);
            Nd4j.writeAsNumpy(a, new File(out, o.replace("/", "__") + ".npy"));
            System.out.println(o + " " + java.util.Arrays.toString(a.shape()));
        }
    }
}
