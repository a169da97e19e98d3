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
 * maxBytes (SAMEDIFF_PY_OFFHEAP: 2.75 GB on a 23 GB machine) for reuse by exact shape. Big arrays whose shapes
 * change from batch to batch (counted rows, bucketed lengths) rarely hit, and glibc keeps their memory once
 * freed: resident memory grew to ~2.2 GB for a BERT-vocabulary step that needs ~1.2 GB. {@link #install}
 * binds an inference factory whose sessions reuse SMALL arrays through a bounded cache (fresh allocations cost
 * Java objects and time) and free BIG ones at once (samediff_py also sets glibc's mmap threshold to the same
 * size, so their memory goes back to the system).
 */
public final class SessionMemory {
    private SessionMemory() {}

    private static long installed = -1;

    /**
     * Sessions created from now on reuse arrays smaller than {@code bigBytes} through a cache of at most
     * {@code cacheBytes}, and close arrays of {@code bigBytes} or more as soon as they are released
     * ({@code bigBytes <= 0}: every array goes through the cache; {@code cacheBytes <= 0}: none is cached).
     */
    public static synchronized void install(long cacheBytes, long bigBytes) {
        installed = cacheBytes;
        SameDiff.bindInferenceFactory(new SameDiff.DefaultInferenceFactory() {
            @Override
            public InferenceSession create(SameDiff sd) {
                InferenceSession s = new InferenceSession(sd);
                s.setMmgr(manager(cacheBytes, bigBytes));
                return s;
            }
        });
    }

    /** The cache bound installed ({@code -1}: M2.1's default manager). */
    public static synchronized long installed() {
        return installed;
    }

    static SessionMemMgr manager(long cacheBytes, long bigBytes) {
        if (cacheBytes <= 0) return new Paced(new Releasing());  // big arrays released anyway; small too
        long max = org.bytedeco.javacpp.Pointer.maxBytes();
        double frac = Math.min(0.99, Math.max(1e-12, (double) cacheBytes / Math.max(max, 1)));
        ArrayCacheMemoryMgr cache = new ArrayCacheMemoryMgr(frac, 1024, 2.0);
        return new Paced(bigBytes > 0 ? new Hybrid(cache, bigBytes) : cache);
    }

    /** Another manager with {@link #paceCollections} checked before each allocation (mid-pass garbage too). */
    public static final class Paced extends AbstractMemoryMgr {
        private final SessionMemMgr inner;

        Paced(SessionMemMgr inner) {
            this.inner = inner;
        }

        @Override
        public INDArray allocate(boolean detached, DataType dataType, long... shape) {
            paceCollections();
            return inner.allocate(detached, dataType, shape);
        }

        @Override
        public INDArray allocate(boolean detached, LongShapeDescriptor d) {
            paceCollections();
            return inner.allocate(detached, d);
        }

        @Override
        public void release(INDArray array) {
            inner.release(array);
        }

        @Override
        public void close() {
            inner.close();
        }
    }

    /** Arrays of {@code big} bytes or more: fresh, closed on release; smaller ones: through the cache. */
    public static final class Hybrid extends AbstractMemoryMgr {
        private final ArrayCacheMemoryMgr cache;
        private final long big;
        private final Releasing fresh = new Releasing();

        Hybrid(ArrayCacheMemoryMgr cache, long big) {
            this.cache = cache;
            this.big = big;
        }

        private boolean isBig(DataType dt, long[] shape) {
            long n = dt.width();
            for (long d : shape) n *= d;
            return n >= big;
        }

        @Override
        public INDArray allocate(boolean detached, DataType dataType, long... shape) {
            return isBig(dataType, shape) ? fresh.allocate(detached, dataType, shape) : cache.allocate(detached, dataType, shape);
        }

        @Override
        public INDArray allocate(boolean detached, LongShapeDescriptor d) {
            return !d.isEmpty() && isBig(d.dataType(), d.getShape()) ? fresh.allocate(detached, d) : cache.allocate(detached, d);
        }

        @Override
        public void release(INDArray array) {
            if (array != null && !array.isEmpty() && array.data() != null
                    && array.data().length() * array.dataType().width() >= big) {
                fresh.release(array);
            } else {
                cache.release(array);
            }
        }

        @Override
        public void close() {
            cache.close();
        }
    }

    /** Share of wall time the paced collections may take ({@code -Dsamediffpy.gcShare}; 0: never). */
    static final double GC_SHARE = Double.parseDouble(System.getProperty("samediffpy.gcShare", "0.02"));
    private static volatile long lastGcEnd = System.nanoTime();
    private static volatile long lastGcNanos = 20_000_000L;  // a guess until the first collection is timed
    private static volatile long collections = 0;

    /**
     * Called after every graph pass (inference, gradients, training step) and before each allocation of a
     * session samediff_py made (sessions of {@code sd.fit} excepted): a collection when the time since
     * the last one is at least {@code 1 / share} times what that one took, so they cost at most {@code share}
     * of the wall time.
     *
     * <p>Why: nd4j frees an array's memory when it is closed or when the collector finds its Java object
     * unreachable. Sessions close what they release, but views (reshape, permute...), the buffers they share,
     * outputs and per-call temporaries wait for a collection, and an INDArray's Java object is tiny, so the
     * heap fills and collects rarely: resident memory grew by ~0.4 GB per training step of the base model at
     * batch 128 x time 256, up to javacpp's off-heap limit (half the RAM), and fresh memory made steps slower.
     */
    public static void paceCollections() {
        if (GC_SHARE <= 0 || (System.nanoTime() - lastGcEnd) * GC_SHARE < lastGcNanos) return;
        synchronized (SessionMemory.class) {
            long now = System.nanoTime();
            if ((now - lastGcEnd) * GC_SHARE < lastGcNanos) return;
            System.gc();
            long end = System.nanoTime();
            lastGcNanos = Math.max(end - now, 1_000_000L);
            lastGcEnd = end;
            collections++;
        }
    }

    /** Paced collections made so far (tests). */
    public static long pacedCollections() {
        return collections;
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
