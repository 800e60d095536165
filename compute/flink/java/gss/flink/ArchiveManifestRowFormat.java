/*
 * Why Java: the archive leg of a HybridSource must yield the same Java type as the Kafka leg
 * (KafkaRowDeserializer's Row); PyFlink 2.3's file formats yield only Strings (text lines), and
 * a Python reader in a loop would not be a Flink source (no splits, checkpoints or alignment).
 */
package gss.flink;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.GZIPInputStream;
import javax.annotation.Nullable;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.src.reader.SimpleStreamFormat;
import org.apache.flink.connector.file.src.reader.StreamFormat;
import org.apache.flink.core.fs.FSDataInputStream;
import org.apache.flink.core.fs.FileSystem;
import org.apache.flink.core.fs.Path;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.types.Row;

/**
 * Each input file is a manifest of a GROUP of one topic's partitions: a line per committed
 * batch, "partition TAB file-URI [TAB file-URI ...]", a partition's batches in offset order.
 * A batch's files (.jsonl.gz, docs/history.md) may interleave (a late record goes to its own
 * hour's file), so they are merged by offset; the group's partitions are merged by Kafka
 * timestamp (ties: the lower partition first), so event time advances across the group as it
 * did in Kafka and a window sees no partition's past after another partition's future. Each
 * partition stays in offset order. One manifest = one split = one reader; the merge is
 * deterministic, so on restore the file source re-opens the manifest and skips the records
 * already emitted.
 *
 * A damaged file (missing, not gzip, a bad line, a record outside the offsets its name carries)
 * fails the read with an IOException naming the file and its offset range.
 */
public class ArchiveManifestRowFormat extends SimpleStreamFormat<Row> {
    private static final long serialVersionUID = 1L;
    private static final Pattern DATA_NAME = Pattern.compile("(\\d{20})-(\\d{20})\\.jsonl(\\.gz)?$");

    @Override
    public StreamFormat.Reader<Row> createReader(Configuration config, FSDataInputStream manifest) throws IOException {
        final TreeMap<Integer, PartitionStream> partitions = new TreeMap<>();
        try (BufferedReader m = new BufferedReader(new InputStreamReader(manifest, StandardCharsets.UTF_8))) {
            for (String line; (line = m.readLine()) != null; ) {
                if (line.isBlank()) continue;
                String[] fields = line.trim().split("\t");
                int partition = Integer.parseInt(fields[0]);
                String[] files = new String[fields.length - 1];
                System.arraycopy(fields, 1, files, 0, files.length);
                partitions.computeIfAbsent(partition, p -> new PartitionStream(p)).batches.add(files);
            }
        }
        final List<PartitionStream> streams = new ArrayList<>(partitions.values());
        return new StreamFormat.Reader<Row>() {
            @Nullable
            @Override
            public Row read() throws IOException {
                PartitionStream best = null;
                long bestTs = 0;
                for (PartitionStream s : streams) {
                    Row head = s.peek();
                    if (head == null) continue;
                    long ts = head.getFieldAs(2);
                    if (best == null || ts < bestTs) {
                        best = s;
                        bestTs = ts;
                    }
                }
                return best == null ? null : best.take();
            }

            @Override
            public void close() throws IOException {
                for (PartitionStream s : streams) s.closeBatch();
            }
        };
    }

    /** One partition's batches, each batch's files merged by offset. */
    private static final class PartitionStream {
        final int partition;
        final ArrayDeque<String[]> batches = new ArrayDeque<>();
        final ObjectMapper mapper = new ObjectMapper();
        final List<ArchiveFile> open = new ArrayList<>();

        PartitionStream(int partition) {
            this.partition = partition;
        }

        /** The partition's next record (without taking it), opening its next batch as needed. */
        Row peek() throws IOException {
            while (true) {
                ArchiveFile f = lowest();
                if (f != null) return f.head;
                closeBatch();
                String[] batch = batches.poll();
                if (batch == null) return null;
                for (String uri : batch) open.add(new ArchiveFile(uri, partition, mapper));
            }
        }

        Row take() throws IOException {
            ArchiveFile f = lowest();
            Row out = f.head;
            f.advance();
            return out;
        }

        private ArchiveFile lowest() {
            ArchiveFile best = null;
            for (ArchiveFile f : open) {
                if (f.head != null && (best == null || (long) f.head.getFieldAs(1) < (long) best.head.getFieldAs(1))) best = f;
            }
            return best;
        }

        void closeBatch() throws IOException {
            for (ArchiveFile f : open) f.close();
            open.clear();
        }
    }

    /** One archive data file, read a record ahead. */
    private static final class ArchiveFile {
        final String uri;
        final int partition;
        final long first;
        final long last;
        final ObjectMapper mapper;
        final BufferedReader in;
        Row head;

        ArchiveFile(String uri, int partition, ObjectMapper mapper) throws IOException {
            this.uri = uri;
            this.partition = partition;
            this.mapper = mapper;
            Matcher m = DATA_NAME.matcher(uri);
            if (!m.find()) throw new IOException("archive file " + uri + " does not carry an offset range in its name");
            this.first = Long.parseLong(m.group(1));
            this.last = Long.parseLong(m.group(2));
            BufferedReader reader;
            try {
                Path path = new Path(uri);
                FSDataInputStream raw = FileSystem.get(path.toUri()).open(path);
                reader = new BufferedReader(new InputStreamReader(
                        uri.endsWith(".gz") ? new GZIPInputStream(raw, 1 << 16) : raw, StandardCharsets.UTF_8));
            } catch (IOException e) {
                throw damaged("cannot be opened", e);
            }
            this.in = reader;
            advance();
        }

        void advance() throws IOException {
            head = null;
            try {
                for (String line; (line = in.readLine()) != null; ) {
                    if (line.isEmpty()) continue;
                    JsonNode n = mapper.readTree(line);
                    long offset = n.get("offset").asLong();
                    int p = n.get("partition").asInt();
                    if (p != partition || offset < first || offset > last) {
                        throw damaged("holds a record of partition " + p + " offset " + offset, null);
                    }
                    head = Row.of(p, offset, n.get("timestamp_ms").asLong(), bytes(n.get("key")), bytes(n.get("value")));
                    return;
                }
            } catch (IOException | RuntimeException e) {
                if (e.getMessage() != null && e.getMessage().startsWith("archive file ")) throw e;
                throw damaged("is damaged", e);
            }
        }

        /** The error of a damaged file: innermost in the job's failure, so its message is what
         * `gss` reports (the parser's own exception is kept as suppressed, not as the cause). */
        IOException damaged(String problem, @Nullable Exception cause) {
            IOException e = new IOException(
                    "archive file " + uri + " (partition " + partition + ", offsets " + first + "-" + last + ") " + problem
                            + (cause == null ? "" : ": " + cause));
            if (cause != null) e.addSuppressed(cause);
            return e;
        }

        void close() throws IOException {
            in.close();
        }
    }

    private static byte[] bytes(JsonNode n) {
        return (n == null || n.isNull()) ? null : Base64.getDecoder().decode(n.asText());
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return KafkaRowDeserializer.ROW_TYPE;
    }
}
