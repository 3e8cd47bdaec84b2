package dev.millrace.bench;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.nio.ByteBuffer;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.Cache;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.WriteBufferManager;

/**
 * The stateful benchmark's Kafka Streams contender: the same topology as
 * Millrace's `aggregate` step in bench/src/state.rs. A running count and sum
 * of `n` per record key in a RocksDB store named "totals" (changelog
 * APPLICATION_ID-totals-changelog), every update written to OUTPUT as
 * {"key":..,"count":..,"total":..}, as Millrace writes them.
 *
 * Usage: RunningCount BOOTSTRAP APPLICATION_ID INPUT OUTPUT THREADS STATE_DIR [key=value ...]
 * (always exactly_once_v2; key=value settings from the harness last). Settings that differ from Kafka Streams'
 * defaults, and why, are commented below; bench/README.md lists them all.
 * Each finished restore prints one line "restored RECORDS TOPIC-PARTITION"
 * on stdout, so the harness can tell a wipe from a tail replay, and each
 * restored batch "batch RECORDS TOPIC-PARTITION", for its restore timeline.
 */
public final class RunningCount {
  static final JsonFactory JSON = new JsonFactory();

  public static void main(String[] args) throws Exception {
    Properties p = settings(args);
    String input = args[2], output = args[3];

    StreamsBuilder builder = new StreamsBuilder();
    builder.stream(input, Consumed.with(Serdes.String(), Serdes.ByteArray()))
        .groupByKey(Grouped.with(Serdes.String(), Serdes.ByteArray()))
        .aggregate(
            () -> new Totals(0, 0),
            (key, value, t) -> new Totals(t.count() + 1, t.total() + amount(value)),
            Materialized.<String, Totals, KeyValueStore<Bytes, byte[]>>as("totals")
                .withKeySerde(Serdes.String())
                .withValueSerde(Totals.SERDE))
        .toStream()
        .map((key, t) -> KeyValue.pair(key,
            "{\"key\":\"" + key + "\",\"count\":" + t.count() + ",\"total\":" + t.total() + "}"))
        .to(output, Produced.with(Serdes.String(), Serdes.String()));

    KafkaStreams streams = new KafkaStreams(builder.build(), p);
    streams.setGlobalStateRestoreListener(new Restores());
    UntilStopped.run(streams);
  }

  /** The settings every stateful contender runs with, from their arguments. */
  static Properties settings(String[] args) {
    return settings(args, 6);
  }

  /**
   * The same, for a contender with `fixed` arguments before the harness's
   * key=value settings.
   */
  static Properties settings(String[] args, int fixed) {
    String bootstrap = args[0], appId = args[1];
    int threads = Integer.parseInt(args[4]);
    String stateDir = args[5];

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    // Kafka Streams' exactly-once default, and Millrace's commitInterval here.
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
    p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
    p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
    // Static membership (KIP-345), as experts run restartable instances: a
    // restarted instance takes its partitions back at once instead of
    // waiting out the SIGKILLed member's session (45 s by default).
    p.put(StreamsConfig.mainConsumerPrefix(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG), appId + "-instance");
    // Millrace emits every update of an aggregate; Kafka Streams' record
    // cache would fold updates of one key between commits into one output
    // (fewer outputs and fewer store writes: a different result stream).
    p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0L);
    // RocksDB bounded to the memory Millrace's store gets (64 MiB: block
    // cache with the write buffers charged to it), as Kafka Streams' docs
    // show for bounding memory; by default every store has its own cache
    // and write buffers.
    p.put(StreamsConfig.ROCKSDB_CONFIG_SETTER_CLASS_CONFIG, BoundedMemory.class);
    return Overrides.apply(p, args, fixed);
  }

  /** `n` of a JSON object, read by a streaming parser (no tree is built). */
  static long amount(byte[] value) {
    return field(value, "n", JsonParser::getLongValue, 0L);
  }

  /** A read of a parser positioned on a field's value. */
  interface Read<T> {
    T from(JsonParser parser) throws java.io.IOException;
  }

  /**
   * The top-level field `name` of a JSON object, read by `read` from a
   * streaming parser (no tree is built), or `otherwise` when it is absent.
   */
  static <T> T field(byte[] value, String name, Read<T> read, T otherwise) {
    try (JsonParser parser = JSON.createParser(value)) {
      if (parser.nextToken() != JsonToken.START_OBJECT) {
        return otherwise;
      }
      while (parser.nextToken() == JsonToken.FIELD_NAME) {
        String field = parser.currentName();
        parser.nextToken();
        if (name.equals(field)) {
          return read.from(parser);
        }
        parser.skipChildren();
      }
    } catch (Exception e) {
      // The benchmark's input is well formed; a bad record reads as `otherwise`.
    }
    return otherwise;
  }

  record Totals(long count, long total) {
    static final Serde<Totals> SERDE = Serdes.serdeFrom(
        (Serializer<Totals>) (topic, t) ->
            ByteBuffer.allocate(16).putLong(t.count()).putLong(t.total()).array(),
        (Deserializer<Totals>) (topic, bytes) -> {
          ByteBuffer b = ByteBuffer.wrap(bytes);
          return new Totals(b.getLong(), b.getLong());
        });
  }

  /** One line per finished restore, for the harness. */
  static final class Restores implements StateRestoreListener {
    @Override
    public void onRestoreStart(TopicPartition tp, String store, long start, long end) {}

    @Override
    public void onBatchRestored(TopicPartition tp, String store, long batchEnd, long restored) {
      System.out.println("batch " + restored + " " + tp);
      System.out.flush();
    }

    @Override
    public void onRestoreEnd(TopicPartition tp, String store, long total) {
      System.out.println("restored " + total + " " + tp);
      System.out.flush();
    }
  }

  /** One block cache for every store, with the write buffers charged to it. */
  public static final class BoundedMemory implements RocksDBConfigSetter {
    private static final long TOTAL_BYTES = 64L << 20;
    private static final long WRITE_BUFFER_BYTES = 32L << 20;
    private static final Cache CACHE = new LRUCache(TOTAL_BYTES, -1, false, 0.1);
    private static final WriteBufferManager WRITE_BUFFERS =
        new WriteBufferManager(WRITE_BUFFER_BYTES, CACHE);

    @Override
    public void setConfig(String storeName, Options options, Map<String, Object> configs) {
      BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
      table.setBlockCache(CACHE);
      table.setCacheIndexAndFilterBlocks(true);
      table.setCacheIndexAndFilterBlocksWithHighPriority(true);
      table.setPinTopLevelIndexAndFilter(true);
      options.setWriteBufferManager(WRITE_BUFFERS);
      options.setTableFormatConfig(table);
    }

    @Override
    public void close(String storeName, Options options) {
      // The cache and write buffer manager are shared: never closed per store.
    }
  }
}
