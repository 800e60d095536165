/*
 * Why Java: every element that crosses between the JVM and a Python worker pays PyFlink's
 * per-element cost (Beam's data plane, coders, a Python call), several times what a map plugin
 * itself costs. Handing Python a batch of records per element, and flattening its batch of
 * results back here, pays it once per batch (docs/compute.md, "Performance"). Flink has no
 * count-or-time batching operator in its DataStream API; this is that, kept small.
 */
package gss.flink;

import java.util.ArrayList;
import java.util.List;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Rows in, arrays of rows out: a batch leaves when it holds maxRows rows or its first row has
 * waited maxDelayMs, and before every checkpoint barrier, watermark and the end of input, so
 * no row is held across a checkpoint (no state) and none falls behind a watermark.
 */
public class RowBatcher extends AbstractStreamOperator<Row[]>
        implements OneInputStreamOperator<Row, Row[]>, ProcessingTimeCallback {
    private static final long serialVersionUID = 1L;
    private final int maxRows;
    private final long maxDelayMs;
    private transient List<Row> buffer;
    private transient boolean timerSet;

    public RowBatcher(int maxRows, long maxDelayMs) {
        if (maxRows < 1 || maxDelayMs < 0) {
            throw new IllegalArgumentException("RowBatcher needs maxRows >= 1 and maxDelayMs >= 0");
        }
        this.maxRows = maxRows;
        this.maxDelayMs = maxDelayMs;
    }

    @Override
    public void open() throws Exception {
        super.open();
        buffer = new ArrayList<>(maxRows);
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        buffer.add(element.getValue());
        if (buffer.size() >= maxRows) {
            flush();
        } else if (!timerSet) {
            timerSet = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + maxDelayMs, this);
        }
    }

    @Override
    public void onProcessingTime(long time) {
        timerSet = false;
        flush();
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        flush();
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flush();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void finish() throws Exception {
        flush();
        super.finish();
    }

    private void flush() {
        if (buffer.isEmpty()) {
            return;
        }
        output.collect(new StreamRecord<>(buffer.toArray(new Row[0])));
        buffer = new ArrayList<>(maxRows);
    }

    /** Arrays of rows back into rows, in order (a Python step's batch of results). */
    public static class Flatten implements FlatMapFunction<Row[], Row> {
        private static final long serialVersionUID = 1L;

        @Override
        public void flatMap(Row[] rows, Collector<Row> out) {
            for (Row row : rows) {
                out.collect(row);
            }
        }
    }
}
