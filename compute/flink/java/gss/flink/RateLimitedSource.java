/*
 * Why Java: flink-core's RateLimiterStrategy / RateLimitedSourceReader throttle a source's
 * readers, but nothing wraps an existing Source with them and PyFlink exposes neither; this
 * wrapper (around the archive leg's FileSource) is the small missing piece.
 */
package gss.flink;

import java.util.Collection;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SourceSplit;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimitedSourceReader;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimiterStrategy;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/** Any Source, its readers throttled to recordsPerSecond in total (Flink's RateLimitedSourceReader). */
public class RateLimitedSource<T, S extends SourceSplit, E> implements Source<T, S, E>, ResultTypeQueryable<T> {
    private static final long serialVersionUID = 1L;
    private final Source<T, S, E> inner;
    private final RateLimiterStrategy<S> strategy;

    @SuppressWarnings("unchecked")
    public RateLimitedSource(Source<T, S, E> inner, double recordsPerSecond) {
        this.inner = inner;
        this.strategy = (RateLimiterStrategy<S>) RateLimiterStrategy.perSecond(recordsPerSecond);
    }

    @Override
    public Boundedness getBoundedness() { return inner.getBoundedness(); }

    @Override
    public SourceReader<T, S> createReader(SourceReaderContext ctx) throws Exception {
        final SourceReader<T, S> reader = inner.createReader(ctx);
        return new RateLimitedSourceReader<T, S>(reader, strategy.createRateLimiter(ctx.currentParallelism())) {
            // Watermark alignment pauses splits: pass it on (the wrapper itself does not).
            @Override
            public void pauseOrResumeSplits(Collection<String> toPause, Collection<String> toResume) {
                reader.pauseOrResumeSplits(toPause, toResume);
            }
        };
    }

    @Override
    public SplitEnumerator<S, E> createEnumerator(SplitEnumeratorContext<S> ctx) throws Exception {
        return inner.createEnumerator(ctx);
    }

    @Override
    public SplitEnumerator<S, E> restoreEnumerator(SplitEnumeratorContext<S> ctx, E checkpoint) throws Exception {
        return inner.restoreEnumerator(ctx, checkpoint);
    }

    @Override
    public SimpleVersionedSerializer<S> getSplitSerializer() { return inner.getSplitSerializer(); }

    @Override
    public SimpleVersionedSerializer<E> getEnumeratorCheckpointSerializer() { return inner.getEnumeratorCheckpointSerializer(); }

    @SuppressWarnings("unchecked")
    @Override
    public TypeInformation<T> getProducedType() {
        return inner instanceof ResultTypeQueryable ? ((ResultTypeQueryable<T>) inner).getProducedType() : null;
    }
}
