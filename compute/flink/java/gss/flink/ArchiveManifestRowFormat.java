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
import java.util.List;
import java.util.Base64;
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
 * Each input file is a manifest of ONE partition: a line per committed batch, in offset order,
 * naming the batch's archive files (.jsonl.gz URIs, docs/history.md) separated by tabs. The
 * files of a batch may interleave (a late record goes to its own hour's file), so a batch's
 * files are merged by offset. One manifest = one split = one reader: a partition's history
 * stays in offset order at any parallelism. On restore the file source re-opens the manifest
 * and skips the records already emitted.
 */
public class ArchiveManifestRowFormat extends SimpleStreamFormat<Row> {
    private static final long serialVersionUID = 1L;

    @Override
    public StreamFormat.Reader<Row> createReader(Configuration config, FSDataInputStream manifest) throws IOException {
        final ArrayDeque<String[]> batches = new ArrayDeque<>();
        try (BufferedReader m = new BufferedReader(new InputStreamReader(manifest, StandardCharsets.UTF_8))) {
            for (String line; (line = m.readLine()) != null; ) {
                if (!line.isBlank()) batches.add(line.trim().split("\t"));
            }
        }
        final ObjectMapper mapper = new ObjectMapper();
        return new StreamFormat.Reader<Row>() {
            private final List<BufferedReader> open = new ArrayList<>();
            private final List<Row> heads = new ArrayList<>();

            private Row next(BufferedReader in) throws IOException {
                for (String line; (line = in.readLine()) != null; ) {
                    if (line.isEmpty()) continue;
                    JsonNode n = mapper.readTree(line);
                    return Row.of(n.get("partition").asInt(), n.get("offset").asLong(),
                            n.get("timestamp_ms").asLong(), bytes(n.get("key")), bytes(n.get("value")));
                }
                return null;
            }

            @Nullable
            @Override
            public Row read() throws IOException {
                while (true) {
                    int best = -1;
                    for (int i = 0; i < heads.size(); i++) {
                        Row h = heads.get(i);
                        if (h != null && (best < 0 || (long) h.getFieldAs(1) < (long) heads.get(best).getFieldAs(1))) best = i;
                    }
                    if (best >= 0) {
                        Row out = heads.get(best);
                        heads.set(best, next(open.get(best)));
                        return out;
                    }
                    close();
                    String[] batch = batches.poll();
                    if (batch == null) return null;
                    for (String uri : batch) {
                        Path path = new Path(uri);
                        FSDataInputStream in = FileSystem.get(path.toUri()).open(path);
                        BufferedReader r = new BufferedReader(new InputStreamReader(
                                uri.endsWith(".gz") ? new GZIPInputStream(in, 1 << 16) : in, StandardCharsets.UTF_8));
                        open.add(r);
                        heads.add(next(r));
                    }
                }
            }

            @Override
            public void close() throws IOException {
                for (BufferedReader r : open) r.close();
                open.clear();
                heads.clear();
            }
        };
    }

    private static byte[] bytes(JsonNode n) {
        return (n == null || n.isNull()) ? null : Base64.getDecoder().decode(n.asText());
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return KafkaRowDeserializer.ROW_TYPE;
    }
}
