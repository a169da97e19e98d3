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

    /** Share of busy time the paced collections may take ({@code -Dsamediffpy.gcShare}; 0: never). */
    static final double GC_SHARE = gcShare(System.getProperty("samediffpy.gcShare", "0.02"));
    /**
     * A gap this long between two calls is idle time (the process waits for requests), not work; shorter gaps
     * include single ops (a big backward matmul takes ~100 ms), so the bound is generous.
     */
    static final long IDLE_NANOS = 1_000_000_000L;
    private static final Object PACE = new Object();
    private static final java.util.concurrent.atomic.AtomicBoolean COLLECTING =
            new java.util.concurrent.atomic.AtomicBoolean();
    private static long lastCall = System.nanoTime();  // guarded by PACE
    private static long busyNanos = 0;                  // guarded by PACE: work since the last collection
    private static volatile long lastGcNanos = 20_000_000L;  // a guess until the first collection is timed
    private static final java.util.concurrent.atomic.AtomicLong COLLECTIONS = new java.util.concurrent.atomic.AtomicLong();

    static double gcShare(String text) {
        try {
            double v = Double.parseDouble(text);
            return Double.isFinite(v) && v >= 0 && v <= 1 ? v : 0.02;
        } catch (NumberFormatException e) {
            return 0.02;  // samediff_py validates SAMEDIFF_PY_GC_SHARE before the JVM starts; -D typos get the default
        }
    }

    /**
     * Called after every graph pass (inference, gradients, training step) and before each allocation of a
     * session samediff_py made (sessions of {@code sd.fit}, and all sessions with {@code SAMEDIFF_PY_ARRAY_CACHE=-1},
     * only after their pass): a collection once the work since the last one is at least {@code 1 / share} times
     * what that one took, so collections cost at most {@code share} of the time spent working. Work is the time
     * between consecutive calls, gaps of {@link #IDLE_NANOS} or more excepted: a process that idles between
     * requests does not pay a collection on the first call after the pause. One thread collects; others that
     * find a collection due meanwhile go on.
     *
     * <p>Why: nd4j frees an array's memory when it is closed or when the collector finds its Java object
     * unreachable. Sessions close what they release, but views (reshape, permute...), the buffers they share,
     * outputs and per-call temporaries wait for a collection, and an INDArray's Java object is tiny, so the
     * heap fills and collects rarely: resident memory grew by ~0.4 GB per training step of the base model at
     * batch 128 x time 256, up to javacpp's off-heap limit (half the RAM), and fresh memory made steps slower.
     */
    public static void paceCollections() {
        if (GC_SHARE <= 0) return;
        synchronized (PACE) {
            long now = System.nanoTime();
            long gap = now - lastCall;
            lastCall = now;
            if (gap < IDLE_NANOS) busyNanos += gap;
            if (busyNanos * GC_SHARE < lastGcNanos) return;
            busyNanos = 0;
        }
        if (!COLLECTING.compareAndSet(false, true)) return;
        try {
            long t0 = System.nanoTime();
            System.gc();
            long t1 = System.nanoTime();
            lastGcNanos = Math.max(t1 - t0, 1_000_000L);
            COLLECTIONS.incrementAndGet();
            synchronized (PACE) {
                lastCall = t1;  // the collection itself is not work
            }
        } finally {
            COLLECTING.set(false);
        }
    }

    /** Paced collections made so far (tests). */
    public static long pacedCollections() {
        return COLLECTIONS.get();
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
