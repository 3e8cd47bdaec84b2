package dev.millrace.bench;

import com.fasterxml.jackson.core.JsonParser;
import java.time.Duration;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The windowed stateful benchmark's Kafka Streams contender: the same
 * topology as the Millrace pipeline in bench/src/state.rs. Records keyed by
 * id are regrouped by their `g` field (repartition topic
 * APPLICATION_ID-per-window-repartition) and counted and summed per
 * one-minute tumbling window of the event time in `at` (an hour of grace:
 * every input partition spans the whole event time, and they reach the
 * regrouped tasks at different speeds; no record may be late, or the output
 * count would not match), in a
 * RocksDB window store "per-window"; every update is written to OUTPUT as
 * {"key":..,"window":{"startMs":..,"endMs":..},"count":..,"total":..}.
 *
 * Usage: WindowedCount BOOTSTRAP APPLICATION_ID INPUT OUTPUT THREADS STATE_DIR.
 * Its settings are RunningCount's (exactly_once_v2, 100 ms commits, static
 * membership, no record cache, RocksDB bounded to 64 MiB), set there.
 */
public final class WindowedCount {
  public static void main(String[] args) throws Exception {
    Properties p = RunningCount.settings(args);
    p.put(StreamsConfig.DEFAULT_TIMESTAMP_EXTRACTOR_CLASS_CONFIG, EventTime.class);
    String input = args[2], output = args[3];

    StreamsBuilder builder = new StreamsBuilder();
    builder.stream(input, Consumed.with(Serdes.String(), Serdes.ByteArray()))
        .groupBy((key, value) -> group(value), Grouped.with("per-window", Serdes.String(), Serdes.ByteArray()))
        .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMinutes(1), Duration.ofHours(1)))
        .aggregate(
            () -> new RunningCount.Totals(0, 0),
            (key, value, t) -> new RunningCount.Totals(t.count() + 1, t.total() + RunningCount.amount(value)),
            Materialized.<String, RunningCount.Totals, WindowStore<Bytes, byte[]>>as("per-window")
                .withKeySerde(Serdes.String())
                .withValueSerde(RunningCount.Totals.SERDE))
        .toStream()
        .map((w, t) -> KeyValue.pair(w.key(),
            "{\"key\":\"" + w.key() + "\",\"window\":{\"startMs\":" + w.window().start()
                + ",\"endMs\":" + w.window().end() + "},\"count\":" + t.count()
                + ",\"total\":" + t.total() + "}"))
        .to(output, Produced.with(Serdes.String(), Serdes.String()));

    KafkaStreams streams = new KafkaStreams(builder.build(), p);
    streams.setGlobalStateRestoreListener(new RunningCount.Restores());
    UntilStopped.run(streams);
  }

  /** The string field `g`. */
  static String group(byte[] value) {
    return RunningCount.field(value, "g", JsonParser::getText, "");
  }

  /** Event time: the number `at` of the value (epoch milliseconds). */
  public static final class EventTime implements TimestampExtractor {
    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
      if (!(record.value() instanceof byte[] value)) {
        return record.timestamp();
      }
      return RunningCount.field(value, "at", JsonParser::getLongValue, record.timestamp());
    }
  }
}
