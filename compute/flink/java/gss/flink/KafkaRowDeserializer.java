/*
 * Why Java: PyFlink 2.3 only wraps KafkaSource's value-only deserializers (bytes or a String),
 * while a HybridSource needs its file leg and its Kafka leg to yield the SAME Java type. This
 * deserializer gives the Kafka leg the Row the archive leg (ArchiveManifestRowFormat) yields.
 */
package gss.flink;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

/**
 * A Kafka record as Row(partition INT, offset BIGINT, timestamp_ms BIGINT, key BYTES, value BYTES).
 * A tombstone (no value) yields nothing: there is nothing to compute from it, and dropping it
 * here spares the job a Python step.
 */
public class KafkaRowDeserializer implements KafkaRecordDeserializationSchema<Row> {
    private static final long serialVersionUID = 1L;

    /** The element type of both legs (compute/flink/history.py: ROW_TYPE names the same). */
    public static final TypeInformation<Row> ROW_TYPE = Types.ROW_NAMED(
            new String[] {"partition", "offset", "timestamp_ms", "key", "value"},
            Types.INT, Types.LONG, Types.LONG,
            Types.PRIMITIVE_ARRAY(Types.BYTE), Types.PRIMITIVE_ARRAY(Types.BYTE));

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> r, Collector<Row> out) {
        if (r.value() != null) out.collect(Row.of(r.partition(), r.offset(), r.timestamp(), r.key(), r.value()));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return ROW_TYPE;
    }

    /** The Row's timestamp_ms as the record's event time (watermarks at the source, both legs). */
    public static class RowTimestamps implements org.apache.flink.api.common.eventtime.SerializableTimestampAssigner<Row> {
        private static final long serialVersionUID = 1L;

        @Override
        public long extractTimestamp(Row row, long recordTimestamp) {
            Long ts = row.getFieldAs(2);
            return ts == null || ts < 0 ? recordTimestamp : ts;
        }
    }
}
