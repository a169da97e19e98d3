package samediffpy;

import org.nd4j.autodiff.samediff.SameDiff;
import org.nd4j.autodiff.samediff.internal.InferenceSession;
import org.nd4j.autodiff.samediff.internal.SessionMemMgr;
import org.nd4j.autodiff.samediff.internal.memory.AbstractMemoryMgr;
import org.nd4j.autodiff.samediff.internal.memory.ArrayCacheMemoryMgr;
import org.nd4j.linalg.api.buffer.DataType;
import org.nd4j.linalg.api.ndarray.INDArray;
import org.nd4j.linalg.api.shape.LongShapeDescriptor;
import org.nd4j.linalg.factory.Nd4j;

/**
 * How SameDiff sessions hold their intermediate arrays, JVM-wide.
 *
 * <p>M2.1's InferenceSession keeps released arrays in an {@link ArrayCacheMemoryMgr} of up to 25 % of javacpp's
 * maxBytes (SAMEDIFF_PY_OFFHEAP: 2.75 GB on a 23 GB machine) for reuse by exact shape. Shapes that change from
 * batch to batch (counted rows, bucketed lengths) rarely hit, so the cache fills with arrays nobody reuses and
 * the process's resident memory grows by that much. {@link #install(long)} binds an inference factory whose
 * sessions cache at most {@code cacheBytes} ({@code 0}: every released array is closed at once).
 */
public final class SessionMemory {
    private SessionMemory() {}

    private static long installed = -1;

    /** Sessions created from now on cache at most {@code cacheBytes} of released arrays (0 = none). */
    public static synchronized void install(long cacheBytes) {
        installed = cacheBytes;
        SameDiff.bindInferenceFactory(new SameDiff.DefaultInferenceFactory() {
            @Override
            public InferenceSession create(SameDiff sd) {
                InferenceSession s = new InferenceSession(sd);
                s.setMmgr(manager(cacheBytes));
                return s;
            }
        });
    }

    /** The cache bound installed ({@code -1}: M2.1's default manager). */
    public static synchronized long installed() {
        return installed;
    }

    /** Diagnostics: bytes held by the array caches of {@code sd}'s and its gradient function's sessions. */
    @SuppressWarnings("unchecked")
    public static long cachedBytes(SameDiff sd) {
        long total = 0;
        for (SameDiff f : new SameDiff[]{sd, sd.getFunction("grad")}) {
            if (f == null) continue;
            try {
                java.lang.reflect.Field sf = SameDiff.class.getDeclaredField("sessions");
                sf.setAccessible(true);
                for (InferenceSession s : ((java.util.Map<Long, InferenceSession>) sf.get(f)).values()) {
                    SessionMemMgr m = s.getMmgr();
                    if (m instanceof ArrayCacheMemoryMgr) {
                        java.lang.reflect.Field c = ArrayCacheMemoryMgr.class.getDeclaredField("currentCacheSize");
                        c.setAccessible(true);
                        total += c.getLong(m);
                    }
                }
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException(e);
            }
        }
        return total;
    }

    static SessionMemMgr manager(long cacheBytes) {
        if (cacheBytes <= 0) return new Releasing();
        long max = org.bytedeco.javacpp.Pointer.maxBytes();
        double frac = Math.min(0.99, Math.max(1e-12, (double) cacheBytes / Math.max(max, 1)));
        return new ArrayCacheMemoryMgr(frac, 1024, 2.0);
    }

    /** Allocates fresh arrays and closes each released one at once (no reuse cache). */
    public static final class Releasing extends AbstractMemoryMgr {
        @Override
        public INDArray allocate(boolean detached, DataType dataType, long... shape) {
            return Nd4j.createUninitializedDetached(dataType, shape);
        }

        @Override
        public INDArray allocate(boolean detached, LongShapeDescriptor descriptor) {
            if (descriptor.isEmpty()) {
                INDArray ret = Nd4j.create(descriptor);
                return detached ? ret.detach() : ret;
            }
            return Nd4j.createUninitializedDetached(descriptor.dataType(), descriptor.getShape());
        }

        @Override
        public void release(INDArray array) {
            if (array != null && !array.wasClosed() && array.closeable()) array.close();
        }

        @Override
        public void close() {}
    }
}
