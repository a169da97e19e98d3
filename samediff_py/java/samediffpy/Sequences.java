package samediffpy;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;

import org.nd4j.autodiff.samediff.SDVariable;
import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.common.base.Preconditions;
import org.nd4j.linalg.api.buffer.DataType;
import org.nd4j.linalg.api.ops.impl.layers.convolution.Conv1D;
import org.nd4j.linalg.api.ops.impl.layers.convolution.config.Conv1DConfig;
import org.nd4j.linalg.api.ops.impl.layers.convolution.config.PaddingMode;
import org.nd4j.linalg.api.ops.impl.layers.recurrent.LSTMLayer;
import org.nd4j.linalg.api.ops.impl.layers.recurrent.LSTMLayerBp;
import org.nd4j.linalg.api.ops.impl.layers.recurrent.config.LSTMActivations;
import org.nd4j.linalg.api.ops.impl.layers.recurrent.config.LSTMDataFormat;
import org.nd4j.linalg.api.ops.impl.layers.recurrent.config.LSTMDirectionMode;
import org.nd4j.linalg.api.ops.impl.layers.recurrent.config.LSTMLayerConfig;
import org.nd4j.linalg.api.ops.impl.layers.recurrent.weights.LSTMLayerWeights;
import org.nd4j.linalg.api.ops.impl.transforms.custom.CumSum;
import org.nd4j.linalg.factory.Nd4j;

/**
 * Sequence ops for samediff_py's masked layers: recurrent layers, 1-d convolution, cumulative sums (pinned
 * signatures for pyjnius), and the fixed op classes they need.
 *
 * <p>M2.1 facts behind this file (measured; see tests/test_recurrent.py, which keeps a test per bug):
 * <ul>
 * <li>libnd4j's {@code lstmLayer} is right, with a sequence-length input: steps past a row's length give 0,
 *     the last-state outputs are taken at the row's last valid step, and in bidirectional modes the backward
 *     direction starts at the last VALID step. The stock Java class is not: its gradient silently ignores the
 *     sequence lengths (and the initial states), and graphs holding it cannot be loaded. {@link FixedLstm}
 *     fixes both; {@link FixedOps#register()} makes every {@code lstmLayer} of the JVM one.</li>
 * <li>{@code gru}'s gradient ({@code gru_bp}) is wrong in the reset gate and {@code gruCell} has none, so the
 *     GRU here is unrolled from plain ops ({@link #gru}), with the mask as a state carry.</li>
 * <li>{@code cumsum}'s gradient is wrong: the clone's {@code configureFromArguments} reads the reverse flag as
 *     an axis and drops it. {@link FixedCumSum} fixes it.</li>
 * </ul>
 */
public final class Sequences {
    private Sequences() {}

    // ======================================================================================== LSTM

    /**
     * {@code lstmLayer} with the M2.1 Java-side bugs fixed (the libnd4j op is unchanged, so files hold a plain
     * {@code lstmLayer}):
     * <ol>
     * <li>inputs in libnd4j's order {@code x, Wx, Wr, [b], [seqLen], [hI], [cI], [Wp]} (the stock class puts
     *     the cell state in hI's slot when both initial states are given);</li>
     * <li>activations: libnd4j reads I_ARGs {@code [format, direction, gateAct, cellAct (candidate),
     *     outAct (applied to c)]} while the stock {@code iArgs()} sends the config's outAct before its cellAct:
     *     {@link #create} stores them crosswise so the stock {@code iArgs()} (also used when saving) is right;</li>
     * <li>{@code doDiff} rebuilt from {@code args()} and the B/I/T arguments, which survive the FlatBuffers clone
     *     SameDiff makes of every op before differentiating; the stock one reads Java fields that the clone
     *     loses, so its gradient silently ignored the sequence lengths;</li>
     * <li>{@code configureWithSameDiff} tolerates {@code SameDiff.load}, which calls it before the op's inputs
     *     are known (the stock class threw a NullPointerException: no file with an lstmLayer could be loaded).</li>
     * </ol>
     * Found and proven by the M2.1 research (notes/m21-rnn-conv-attention.md, rr.FixedLstm).
     */
    public static class FixedLstm extends LSTMLayer {
        public FixedLstm() {}

        private FixedLstm(SameDiff sd, SDVariable x, SDVariable hI, SDVariable cI, SDVariable seqLen,
                          LSTMLayerWeights w, LSTMLayerConfig cfg, boolean[] b) {
            // the stock argument order is x, Wx, Wr, b, seqLen, cLast, yLast, Wp: hI goes in "cLast"'s place
            super(sd, x, hI, cI, seqLen, w, cfg);
            bArguments.clear();
            for (boolean v : b) bArguments.add(v);
        }

        /**
         * Builds the op. Absent inputs are null. Activation ids are {@code LSTMActivations} ordinals (0 tanh,
         * 1 relu, 2 sigmoid, ...); {@code cellAct} is the candidate's, {@code outAct} the one applied to c.
         * dataFormat: 0 TNS, 1 NTS, 2 NST; directionMode: 0 FWD, 1 BWD, 2 BIDIR_SUM, 3 BIDIR_CONCAT.
         */
        public static SDVariable[] create(SameDiff sd, SDVariable x, SDVariable hI, SDVariable cI,
                                          SDVariable seqLen, SDVariable wx, SDVariable wr, SDVariable bias,
                                          int dataFormat, int directionMode, int gateAct, int cellAct, int outAct,
                                          boolean retFull, boolean retLastH, boolean retLastC) {
            LSTMLayerWeights w = LSTMLayerWeights.builder().weights(wx).rWeights(wr).bias(bias).build();
            LSTMLayerConfig c = LSTMLayerConfig.builder()
                    .lstmdataformat(LSTMDataFormat.values()[dataFormat])
                    .directionMode(LSTMDirectionMode.values()[directionMode])
                    .gateAct(LSTMActivations.values()[gateAct])
                    .outAct(LSTMActivations.values()[cellAct])   // crosswise: see the class comment
                    .cellAct(LSTMActivations.values()[outAct])
                    .cellClip(0.0)
                    .retFullSequence(retFull).retLastH(retLastH).retLastC(retLastC)
                    .build();
            boolean[] b = {bias != null, seqLen != null, hI != null, cI != null, false, retFull, retLastH, retLastC};
            return new FixedLstm(sd, x, hI, cI, seqLen, w, c, b).outputVariables();
        }

        /** Tolerates SameDiff.load, which configures ops before their inputs are wired. */
        @Override
        public void configureWithSameDiff(SameDiff sameDiff) {
            if (sameDiff.getInputsForOp(this) == null) {
                this.sameDiff = sameDiff;
                return;
            }
            super.configureWithSameDiff(sameDiff);
        }

        private int nOutputs() {
            if (bArguments.size() >= 8) {
                int n = 0;
                for (int k = 5; k < 8; k++) if (bArguments.get(k)) n++;
                return n;
            }
            return super.getNumOutputs();
        }

        @Override
        public int getNumOutputs() {
            return nOutputs();
        }

        @Override
        public List<DataType> calculateOutputDataTypes(List<DataType> inputDataTypes) {
            DataType dt = inputDataTypes.get(0);
            Preconditions.checkState(dt.isFPType(), "lstmLayer input must be floating point, got %s", dt);
            return Collections.nCopies(nOutputs(), dt);
        }

        @Override
        public List<SDVariable> doDiff(List<SDVariable> grads) {
            boolean hasB = bArguments.get(0), hasSeq = bArguments.get(1), hasH = bArguments.get(2),
                    hasC = bArguments.get(3), hasPH = bArguments.get(4), full = bArguments.get(5),
                    lastH = bArguments.get(6), lastC = bArguments.get(7);
            SDVariable[] a = args();
            int k = 0;
            SDVariable x = a[k++], wx = a[k++], wr = a[k++];
            SDVariable b = hasB ? a[k++] : null;
            SDVariable seq = hasSeq ? a[k++] : null;
            SDVariable hI = hasH ? a[k++] : null;
            SDVariable cI = hasC ? a[k++] : null;
            SDVariable wp = hasPH ? a[k++] : null;
            int g = 0;
            SDVariable dLdh = full ? grads.get(g++) : null;
            SDVariable dLdhL = lastH ? grads.get(g++) : null;
            SDVariable dLdcL = lastC ? grads.get(g++) : null;
            // LSTMLayerBp's own input order (x, Wx, Wr, b, seqLen, yLast, cLast, Wp, grads) is libnd4j's when
            // yLast = hI and cLast = cI; its iArgs are [fmt, dir, gate, config.outAct, config.cellAct], so its
            // config's out/cell fields take libnd4j's slot-3/slot-4 values
            LSTMLayerConfig bpCfg = LSTMLayerConfig.builder()
                    .lstmdataformat(LSTMDataFormat.values()[iArguments.get(0).intValue()])
                    .directionMode(LSTMDirectionMode.values()[iArguments.get(1).intValue()])
                    .gateAct(LSTMActivations.values()[iArguments.get(2).intValue()])
                    .outAct(LSTMActivations.values()[iArguments.get(3).intValue()])
                    .cellAct(LSTMActivations.values()[iArguments.get(4).intValue()])
                    .cellClip(tArguments.isEmpty() ? 0.0 : tArguments.get(0))
                    .retFullSequence(full).retLastH(lastH).retLastC(lastC)
                    .build();
            LSTMLayerWeights w = LSTMLayerWeights.builder().weights(wx).rWeights(wr).bias(b).peepholeWeights(wp)
                    .build();
            SDVariable[] out = new LSTMLayerBp(sameDiff, x, cI, hI, seq, w, bpCfg, dLdh, dLdhL, dLdcL)
                    .outputVariables();
            List<SDVariable> res = new ArrayList<>(Arrays.asList(out));
            if (hasSeq) {  // libnd4j gives the integer lengths no gradient: a zero of their own type
                res.set(3 + (hasB ? 1 : 0), sameDiff.zerosLike(seq));
            }
            return res;
        }
    }

    /**
     * Masked LSTM over {@code [B, T, nIn]} (NTS), right-padded, lengths {@code [B]} int: returns
     * {h [B, T, n or 2n] named {@code name}, hLast, cLast}.
     * directionMode 0 = forward, 3 = bidirectional (forward half first); hLast/cLast are [B, n] or [2, B, n].
     */
    public static SDVariable[] lstm(SameDiff sd, String name, SDVariable x, SDVariable lengths, SDVariable wx,
                                    SDVariable wr, SDVariable b, int directionMode) {
        SDVariable[] out = FixedLstm.create(sd, x, null, null, lengths, wx, wr, b, 1, directionMode,
                LSTMActivations.SIGMOID.ordinal(), LSTMActivations.TANH.ordinal(), LSTMActivations.TANH.ordinal(),
                true, true, true);
        out[0] = sd.updateVariableNameAndReference(out[0], name);
        return out;
    }

    /** The stock M2.1 class (for the tests that document its bugs): same op, stock Java. */
    public static SDVariable[] stockLstm(SameDiff sd, String name, SDVariable x, SDVariable lengths, SDVariable wx,
                                         SDVariable wr, SDVariable b, int directionMode) {
        LSTMLayerWeights w = LSTMLayerWeights.builder().weights(wx).rWeights(wr).bias(b).build();
        LSTMLayerConfig c = LSTMLayerConfig.builder()
                .lstmdataformat(LSTMDataFormat.NTS)
                .directionMode(LSTMDirectionMode.values()[directionMode])
                .gateAct(LSTMActivations.SIGMOID).cellAct(LSTMActivations.TANH).outAct(LSTMActivations.TANH)
                .retFullSequence(true).retLastH(false).retLastC(false)
                .build();
        SDVariable out = new LSTMLayer(sd, x, null, null, lengths, w, c).outputVariables()[0];
        return new SDVariable[]{sd.updateVariableNameAndReference(out, name)};
    }

    /** The class SameDiff instantiates for {@code lstmLayer} in this JVM (tests check the registration). */
    public static String lstmClass() {
        return FixedOps.classFor("lstmLayer");
    }

    /** {@code reverseSequence(x, lengths)} along axis 1 (time), batch axis 0: reverses each row's first
     *  {@code lengths[b]} steps and keeps the rest. */
    public static SDVariable reverseSequence(SameDiff sd, String name, SDVariable x, SDVariable lengths) {
        return sd.reverseSequence(name, x, lengths, 1, 0);
    }

    /** {@code x} reversed along one axis. */
    public static SDVariable reverse(SameDiff sd, String name, SDVariable x, int axis) {
        return sd.reverse(name, x, axis);
    }

    // ======================================================================================== GRU

    /**
     * GRU unrolled over a STATIC {@code maxT} steps from plain ops (all with correct M2.1 gradients), with the
     * mask as a state carry, so right and left padding (and holes) and both directions need no lengths:
     * <pre>
     *   r = sigmoid(x Wx_r + b_r + h Wh_r);  u = sigmoid(x Wx_u + b_u + h Wh_u)
     *   c = tanh(x Wx_c + b_c + r * (h Wh_c + bh_c))          (reset after the matmul, as M2.1's gru op / PyTorch)
     *   h' = u * h + (1 - u) * c;   h_t = m_t ? h' : h_{t-1};   y_t = m_t ? h_t : 0
     * </pre>
     * Gate order r, u, c along 3n; Wx [nIn, 3n], Wh [n, 3n], b [3n] (or null), bhc [n] (or null). x [B, T, nIn]
     * with T <= maxT known at run time: x and the mask are padded to maxT inside the graph and y sliced back to T.
     * mask [B, T] float (1 = valid). reverse: process t = maxT-1 .. 0. Returns {y [B, T, n] named {@code name}, hLast [B, n]}:
     * hLast is the state after the last valid step (0 for a row without any).
     */
    public static SDVariable[] gru(SameDiff sd, String name, SDVariable x, SDVariable mask, SDVariable wx,
                                   SDVariable wh, SDVariable b, SDVariable bhc, int maxT, int nIn, int n,
                                   boolean reverse) {
        DataType dt = x.dataType();
        // --- pad x [B, T, nIn] and mask [B, T] to maxT steps: paddings = C - T * E
        SDVariable t = sd.castTo(sd.sizeAt(x, 1), DataType.INT);
        SDVariable e3 = sd.constant(Nd4j.createFromArray(new int[][]{{0, 0}, {0, 1}, {0, 0}}));
        SDVariable c3 = sd.constant(Nd4j.createFromArray(new int[][]{{0, 0}, {0, maxT}, {0, 0}}));
        SDVariable xp = sd.nn().pad(x, c3.sub(e3.mul(t)), 0.0);
        SDVariable e2 = sd.constant(Nd4j.createFromArray(new int[][]{{0, 0}, {0, 1}}));
        SDVariable c2 = sd.constant(Nd4j.createFromArray(new int[][]{{0, 0}, {0, maxT}}));
        SDVariable mp = sd.nn().pad(mask, c2.sub(e2.mul(t)), 0.0);
        // --- input projections for every step at once: [B*maxT, nIn] @ [nIn, 3n] (+ b) -> maxT x [B, 3n]
        SDVariable z = sd.mmul(sd.reshape(xp, -1, nIn), wx);
        if (b != null) z = z.add(b);
        SDVariable[] zs = sd.unstack(sd.reshape(z, -1, maxT, 3 * n), 1, maxT);
        // --- per-step conditions [B, n] (select does not broadcast) and the zero initial state
        SDVariable zerosBTn = sd.zerosLike(sd.reshape(sd.stridedSlice(z, new long[]{0, 0}, new long[]{0, n},
                new long[]{1, 1}, 1, 1, 0, 0, 0), -1, maxT, n));
        SDVariable mBTn = sd.expandDims(mp, 2).add(zerosBTn);
        SDVariable cond = sd.gt(mBTn, 0.5);
        SDVariable[] ms = sd.unstack(mBTn, 1, maxT);                             // (unstack refuses BOOL)
        SDVariable h = sd.stridedSlice(zerosBTn, new long[]{0, 0, 0}, new long[]{0, 1, 0}, new long[]{1, 1, 1},
                5, 5, 0, 0, 2);                                                  // zerosBTn[:, 0, :]
        SDVariable[] hs = new SDVariable[maxT];
        for (int s = 0; s < maxT; s++) {
            int step = reverse ? maxT - 1 - s : s;
            SDVariable[] zx = sd.split(zs[step], 3, 1);
            SDVariable[] zh = sd.split(sd.mmul(h, wh), 3, 1);
            SDVariable r = sd.nn().sigmoid(zx[0].add(zh[0]));
            SDVariable u = sd.nn().sigmoid(zx[1].add(zh[1]));
            SDVariable hc = bhc == null ? zh[2] : zh[2].add(bhc);
            SDVariable c = sd.math().tanh(zx[2].add(r.mul(hc)));
            SDVariable hn = c.add(u.mul(h.sub(c)));                              // u*h + (1-u)*c
            h = new FixedOps.FixedSelect(sd, new SDVariable[]{sd.gt(ms[step], 0.5), hn, h}).outputVariable();
            hs[step] = h;
        }
        SDVariable all = sd.stack(1, hs);                                          // [B, maxT, n]
        SDVariable y = new FixedOps.FixedSelect(sd, new SDVariable[]{cond, all, zerosBTn}).outputVariable();
        // back to the fed length: y[:, :T]
        SDVariable size = sd.concat(0, sd.constant(Nd4j.createFromArray(new int[]{-1})), sd.reshape(t, 1),
                sd.constant(Nd4j.createFromArray(new int[]{-1})));
        y = sd.slice(y, sd.constant(Nd4j.createFromArray(new int[]{0, 0, 0})), size);
        return new SDVariable[]{sd.updateVariableNameAndReference(y, name), h};
    }

    /** M2.1's fused gru op (time-major x [T, B, nIn], hI [B, n] required): for the tests that document it. */
    public static SDVariable stockGru(SameDiff sd, String name, SDVariable x, SDVariable hI, SDVariable wx,
                                      SDVariable wh, SDVariable b) {
        return sd.rnn().gru(name, x, hI, wx, wh, b);
    }

    /** M2.1's gruCell (x [B, nIn], hLast [B, n]; Wru [nIn+n, 2n], Wc [nIn+n, n], bru [2n], bc [n]): its h output,
     *  for the tests that document it (it has no gradient). */
    public static SDVariable stockGruCell(SameDiff sd, String name, SDVariable x, SDVariable hLast, SDVariable wru,
                                          SDVariable wc, SDVariable bru, SDVariable bc) {
        org.nd4j.linalg.api.ops.impl.layers.recurrent.weights.GRUWeights w =
                org.nd4j.linalg.api.ops.impl.layers.recurrent.weights.GRUWeights.builder()
                        .ruWeight(wru).cWeight(wc).ruBias(bru).cBias(bc).build();
        return sd.updateVariableNameAndReference(sd.rnn().gruCell(x, hLast, w)[3], name);
    }

    // ======================================================================================== helpers

    /**
     * {@code cumsum} with a correct gradient: {@code cumsum(g, exclusive, !reverse)} along the same axes, read
     * from the I_ARGs {@code [exclusive, reverse, axis...]} (which survive the FlatBuffers clone). M2.1's
     * {@code CumSum.configureFromArguments} takes {@code [reverse, axis...]} as the axes and loses the reverse
     * flag, so the stock gradient of every cumsum SameDiff differentiates is wrong (measured: the forward sum's
     * gradient was the reverse sum's).
     */
    public static class FixedCumSum extends CumSum {
        public FixedCumSum() {}

        public FixedCumSum(SameDiff sd, SDVariable x, boolean exclusive, boolean reverse, int axis) {
            super(sd, x, exclusive, reverse, axis);
        }

        @Override
        public List<SDVariable> doDiff(List<SDVariable> grad) {
            boolean exclusive = iArguments.get(0) > 0, reverse = iArguments.get(1) > 0;
            int[] axes = new int[iArguments.size() - 2];
            for (int i = 0; i < axes.length; i++) axes[i] = iArguments.get(i + 2).intValue();
            SDVariable g = new CumSum(sameDiff, grad.get(0), exclusive, !reverse, axes).outputVariable();
            return Collections.singletonList(g);
        }
    }

    /** Cumulative sum along one axis, with the fixed gradient (pinned signature). */
    public static SDVariable cumsum(SameDiff sd, String name, SDVariable x, boolean exclusive, boolean reverse,
                                    int axis) {
        return sd.updateVariableNameAndReference(new FixedCumSum(sd, x, exclusive, reverse, axis).outputVariable(),
                name);
    }

    /**
     * The row index for {@link #gatherRows} (masked.rows.mask_rows): {@code [B*T]} int, each valid position's
     * own row ({@code b*T + t}), {@code B*T} (one past the last row: the filler row) for padded positions.
     * mask {@code [B, T]} float 0/1.
     */
    public static SDVariable maskRowIndex(SameDiff sd, String name, SDVariable mask) {
        SDVariable m = sd.castTo(sd.reshape(mask, -1), DataType.INT);                  // [N], 0/1
        SDVariable count = sd.castTo(sd.sizeAt(m, 0), DataType.INT);
        SDVariable pos = sd.range(sd.constant(Nd4j.scalar(DataType.INT, 0)), count,
                sd.constant(Nd4j.scalar(DataType.INT, 1)), DataType.INT);              // 0 .. N-1
        return sd.updateVariableNameAndReference(pos.mul(m).add(count.mul(m.rsub(1))), name);
    }

    /**
     * {@code [rows of flat; one filler row][index]}: rows by index, {@code index == rows} reading {@code fill}.
     * flat {@code [n, F]}.
     */
    public static SDVariable gatherRows(SameDiff sd, String name, SDVariable flat, SDVariable index, double fill) {
        SDVariable table = withFillerRow(sd, flat, fill);
        SDVariable out = new FixedOps.FixedGather(sd, table, index, 0).outputVariable();
        return sd.updateVariableNameAndReference(out, name);
    }

    /**
     * {@link #gatherRows} for an index of known structure, whose gradient is then a gather, not a scatter-add
     * ({@link FixedOps.FixedGather}): with {@code n} the rows of {@code flat} and k the length of {@code offsets},
     * {@code index} has {@code n * k} entries and {@code index[p*k + j]} is {@code p + offsets[j]} or {@code n}
     * (the filler row); k = 1, offset 0: {@link #maskRowIndex}. With {@code checkLength}, an index of
     * another length (a value whose batch x time differs from its mask's at run time) fails with an error
     * (the reshape to {@code [n, k]}, four small ops) instead of gathering wrong rows; without it, the caller
     * guarantees the lengths match (its rows are those of a value reshaped to the same mask's own shape).
     */
    public static SDVariable gatherRowsShifted(SameDiff sd, String name, SDVariable flat, SDVariable index,
                                               double fill, long[] offsets, boolean checkLength) {
        SDVariable table = withFillerRow(sd, flat, fill);
        SDVariable checked = index;
        if (checkLength) {
            SDVariable nk = sd.concat(0, sd.reshape(sd.castTo(sd.sizeAt(flat, 0), DataType.LONG), 1),
                    sd.constant(Nd4j.createFromArray(new long[]{offsets.length})));
            checked = sd.reshape(sd.reshape(index, nk), -1);
        }
        SDVariable out = new FixedOps.FixedGather(sd, table, checked, offsets).outputVariable();
        return sd.updateVariableNameAndReference(out, name);
    }

    /**
     * {@code [n, F] -> [n + 1, F]}, the last row {@code fill}: a pad, not a concat with a constant row (libnd4j's
     * concat copies {@code [4096, 128]} float32 in ~0.7 ms, its pad in ~0.2 ms; the gradient is a slice).
     */
    static SDVariable withFillerRow(SameDiff sd, SDVariable flat, double fill) {
        return sd.nn().pad(flat, sd.constant(Nd4j.createFromArray(new int[][]{{0, 1}, {0, 0}})), fill);
    }

    /**
     * {@code mask [B', T']} reshaped to {@code like}'s leading {@code [B, T]} at run time: an error unless
     * {@code B' == B} and {@code T' == T} (masked.rows.valid_condition, whose broadcast would take a mask of batch
     * or time 1; see {@link #exactLead}).
     */
    public static SDVariable maskAs(SameDiff sd, String name, SDVariable mask, SDVariable like) {
        return sd.reshape(name, mask, exactLead(sd, mask, like));
    }

    /**
     * {@code [B + d, T + d]}, {@code [B, T]} like's leading dims and {@code d = |B' - B| + |T' - T|} ({@code [B', T']}
     * the mask's): exactly the mask's own shape when the dims agree, else a shape of more elements than the mask
     * has, so reshaping the mask to it fails. (A reshape to {@code [B, T]} alone compares {@code B * T} only: it
     * would accept a mask {@code [1, 4]} for a value {@code [4, 1, F]}, or {@code [2, 3]} for {@code [3, 2, F]}.)
     */
    static SDVariable exactLead(SameDiff sd, SDVariable mask, SDVariable like) {
        SDVariable own = sd.shape(mask);
        SDVariable want = sd.stridedSlice(sd.shape(like), new long[]{0}, new long[]{2}, new long[]{1});
        return want.add(sd.math().abs(own.sub(want)).sum());
    }

    /**
     * The mask as a factor for {@code like [B, T, F...]}: reshaped to like's own B and T, which must be the
     * mask's own (a mask of batch or time 1 against a larger value, or of swapped sizes, fails here instead of
     * being broadcast or read in another order), then to rank
     * {@code rank} with trailing 1s, cast to {@code dtype}. {@code like} null: the mask's own B and T (for values
     * known to have them).
     */
    public static SDVariable maskFactor(SameDiff sd, String name, SDVariable mask, SDVariable like, int rank,
                                        DataType dtype) {
        SDVariable lead = like == null ? sd.shape(mask) : exactLead(sd, mask, like);
        SDVariable shape = lead;
        if (rank > 2) {
            long[] ones = new long[rank - 2];
            Arrays.fill(ones, 1L);
            shape = sd.concat(0, lead, sd.constant(Nd4j.createFromArray(ones).castTo(lead.dataType())));
        }
        SDVariable m = mask.dataType() == dtype ? mask : sd.castTo(mask, dtype);
        return sd.reshape(name, m, shape);
    }

    /**
     * The shape {@code [B, T, rest...]}, B and T taken from the mask at run time (masked.rows.unflatten builds
     * it once per mask and trailing shape, and reshapes every value of that shape with it).
     */
    public static SDVariable maskedShape(SameDiff sd, SDVariable mask, long[] rest) {
        SDVariable lead = sd.shape(mask);
        SDVariable tail = sd.constant(Nd4j.createFromArray(rest).castTo(lead.dataType()));
        return sd.concat(0, lead, tail);
    }

    // ======================================================================================== conv1d

    /**
     * The k taps of a stride-1 convolution side by side: {@code x [B, T, C] -> [B, T, k*C]}, column block j
     * holding step {@code t + j*d - left} (zeros before the start and past the end). One pad, k strided slices
     * (their ends relative to the padded end, so no run-time size is needed) and one concat; the gradient is
     * the same ops' own (concat_bp, strided_slice_bp, pad's slice), with no scatter.
     */
    public static SDVariable convColumns(SameDiff sd, String name, SDVariable x, int k, int dilation, int left,
                                         int right) {
        return sd.updateVariableNameAndReference(taps(sd, x, k, dilation, left, right), name);
    }

    private static SDVariable taps(SameDiff sd, SDVariable x, int k, int dilation, int left, int right) {
        int total = left + right;
        SDVariable xp = total == 0 ? x
                : sd.nn().pad(x, sd.constant(Nd4j.createFromArray(new int[][]{{0, 0}, {left, right}, {0, 0}})), 0.0);
        if (k == 1) return sd.identity(xp);
        SDVariable[] taps = new SDVariable[k];
        for (int j = 0; j < k; j++) {
            long b = (long) j * dilation;
            long e = b - total;  // <= 0: relative to the padded end (0: up to it, via the end mask)
            taps[j] = sd.stridedSlice(xp, new long[]{0, b, 0}, new long[]{0, e, 0}, new long[]{1, 1, 1},
                    0b101, e == 0 ? 0b111 : 0b101, 0, 0, 0);
        }
        return sd.concat(2, taps);
    }

    /**
     * {@code conv1d} whose gradient skips the input's when nothing trainable lies upstream of the input (a first
     * layer over data), as PyTorch does. M2.1's {@code conv1d_bp} computes both: oneDNN's backward-data and
     * backward-weights primitives on blocked layouts, four reorders of {@code [32, 128, 128]} float32 (~0.6 ms
     * each) around two convolutions, ~5.5-7 ms where the forward takes ~2 (bench/FINDINGS.md). There, the
     * kernel's gradient is the taps of x ({@link #convColumns}) times the upstream gradient (one matmul), the
     * bias's a matmul with ones, and the input's (built, run only if asked for) a forward convolution of the
     * upstream gradient with the kernel reversed over its taps and transposed (the adjoint: window offsets
     * mirrored). Elsewhere, and for anything but NWC, stride 1, dilation 1, SAME or CAUSAL and a
     * {@code [k, in, out]} kernel of known shape, the stock gradient. The libnd4j op and its arguments are
     * unchanged, so saved files hold a plain {@code conv1d}.
     */
    public static class FastConv1D extends Conv1D {
        public FastConv1D() {}

        public FastConv1D(SameDiff sd, SDVariable x, SDVariable w, SDVariable b, Conv1DConfig config) {
            super(sd, x, w, b, config);
        }

        /**
         * The config from the integer arguments: SameDiff restores a clone's fields by reflection on its own
         * class, which misses the superclass's {@code config} (the stock methods that read it would throw).
         */
        private void restoreConfig() {
            long[] ia = iArgs();
            if (config != null || ia.length < 6) return;
            config = new Conv1DConfig(ia[0], ia[1], ia[2], ia[3], ia[5] == 1 ? Conv1DConfig.NWC : Conv1DConfig.NCW,
                    PaddingMode.values()[(int) ia[4]]);
        }

        @Override
        public Map<String, Object> propertiesForFunction() {
            restoreConfig();
            return super.propertiesForFunction();
        }

        @Override
        public Conv1DConfig getConfig() {
            restoreConfig();
            return super.getConfig();
        }

        @Override
        public List<SDVariable> doDiff(List<SDVariable> grads) {
            restoreConfig();
            long[] ia = iArgs();  // [k, stride, pad, dilation, paddingMode, isNWC, (wFormat)]
            SDVariable[] in = args();
            long[] ws = in[1].getShape();
            boolean same = ia.length >= 6 && ia[4] == PaddingMode.SAME.ordinal();
            boolean causal = ia.length >= 6 && ia[4] == PaddingMode.CAUSAL.ordinal();
            if (!(same || causal) || ia[1] != 1 || ia[3] != 1 || ia[5] != 1 || (ia.length > 6 && ia[6] != 0)
                    || ws == null || ws.length != 3 || ws[0] != ia[0] || ws[1] < 1 || ws[2] < 1
                    || trainableUpstream(sameDiff, in[0])) {
                return super.doDiff(grads);
            }
            SameDiff sd = sameDiff;
            int k = (int) ia[0];
            int left = causal ? k - 1 : (k - 1) / 2;  // SAME: TF's convention, the extra step on the right
            int right = k - 1 - left;
            SDVariable x = in[0], w = in[1], g = grads.get(0);
            // dx[s] = sum_j g[s + j - right] @ w[k-1-j]^T: a convolution with the offsets mirrored (left <-> right)
            // (a gather of the k taps, not libnd4j's reverse: 12-20 ms for [3, 128, 128] float32)
            int[] flip = new int[k];
            for (int j = 0; j < k; j++) flip[j] = k - 1 - j;
            SDVariable wT = sd.permute(sd.gather(w, flip, 0), 0, 2, 1);                           // [k, out, in]
            SDVariable dx;
            if (left == right) {
                dx = sd.cnn().conv1d(g, wT, new Conv1DConfig(k, 1, 0, 1, Conv1DConfig.NWC, PaddingMode.SAME));
            } else {
                SDVariable gp = sd.nn().pad(g,
                        sd.constant(Nd4j.createFromArray(new int[][]{{0, 0}, {right, left}, {0, 0}})), 0.0);
                dx = sd.cnn().conv1d(gp, wT, new Conv1DConfig(k, 1, 0, 1, Conv1DConfig.NWC, PaddingMode.VALID));
            }
            // dW[j] = sum over positions of x[t + j - left]^T g[t]: the taps side by side, one matmul
            SDVariable cols = sd.reshape(taps(sd, x, k, 1, left, right), -1, k * ws[1]);           // [B*T, k*in]
            SDVariable g2 = sd.reshape(g, -1, ws[2]);                                              // [B*T, out]
            SDVariable dw = sd.reshape(sd.mmul(cols, g2, true, false, false), ws);
            if (in.length < 3) return Arrays.asList(dx, dw);
            // db = ones [1, B*T] @ g2: a matmul (~0.1 ms), not reduce_sum over rows (~0.9 ms at [4096, 128])
            SDVariable ones = sd.onesLike(sd.stridedSlice(g2, new long[]{0, 0}, new long[]{0, 1}, new long[]{1, 1},
                    0b01, 0b01, 0, 0, 0));                                                        // [B*T, 1]
            SDVariable db = sd.reshape(sd.mmul(ones, g2, true, false, false), -1);
            return Arrays.asList(dx, dw, db);
        }

        private static final java.util.Set<String> SHAPE_OPS =
                new java.util.HashSet<>(Arrays.asList("shape_of", "shapes_of", "size_at", "size", "rank"));

        /** Whether a trainable float variable feeds {@code v}, through any chain of ops but shape ops. */
        static boolean trainableUpstream(SameDiff sd, SDVariable v) {
            java.util.ArrayDeque<SDVariable> todo = new java.util.ArrayDeque<>(Collections.singletonList(v));
            java.util.Set<String> seen = new java.util.HashSet<>();
            while (!todo.isEmpty()) {
                SDVariable u = todo.pop();
                if (!seen.add(u.name())) continue;
                if (u.getVariableType() == org.nd4j.autodiff.samediff.VariableType.VARIABLE
                        && u.dataType().isFPType()) return true;
                org.nd4j.autodiff.functions.DifferentialFunction op = sd.getVariableOutputOp(u.name());
                // a shape carries no gradient: a value's size read off a trainable one does not count
                if (op != null && !SHAPE_OPS.contains(op.opName())) todo.addAll(Arrays.asList(op.args()));
            }
            return false;
        }
    }


    /**
     * DL4J's conv1d over {@code [B, T, C]} (NWC), weights {@code [k, C, oC]}, bias {@code [oC]} or null, stride 1
     * (masked.conv1d's core at dilation 1: its input's padded positions zeroed before, its output's after).
     * Dilation > 1 fails in M2.1's oneDNN helper for most kernel widths ("could not create a descriptor for a
     * dilated convolution", VALID mode included): masked.conv1d uses {@link #convColumns} there.
     * paddingMode: 0 VALID, 1 SAME (TF convention: extra pad on the right), 2 CAUSAL (left pad (k-1)*d).
     */
    public static SDVariable conv1d(SameDiff sd, String name, SDVariable x, SDVariable w, SDVariable b, long k,
                                    long dilation, int paddingMode) {
        Conv1DConfig c = new Conv1DConfig(k, 1, 0, dilation, Conv1DConfig.NWC, PaddingMode.values()[paddingMode]);
        return sd.updateVariableNameAndReference(new FastConv1D(sd, x, w, b, c).outputVariable(), name);
    }
}
