package dev.millrace.bench;

import java.util.concurrent.CountDownLatch;
import org.apache.kafka.streams.KafkaStreams;

/** Runs a contender until the harness stops it (SIGTERM: a clean close). */
final class UntilStopped {
  private UntilStopped() {}

  static void run(KafkaStreams streams) throws InterruptedException {
    CountDownLatch done = new CountDownLatch(1);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      streams.close();
      done.countDown();
    }));
    streams.start();
    done.await();
  }
}
