package dev.millrace.bench;

import java.util.Properties;

/**
 * Settings the harness passes as trailing `key=value` arguments. The harness
 * owns every setting beyond an app's fixed ones, so the report lists exactly
 * what ran (bench/src/jvm.rs).
 */
final class Overrides {
  private Overrides() {}

  static Properties apply(Properties p, String[] args, int from) {
    for (int i = from; i < args.length; i++) {
      int eq = args[i].indexOf('=');
      if (eq <= 0) {
        throw new IllegalArgumentException("argument " + (i + 1) + " is not key=value: " + args[i]);
      }
      p.put(args[i].substring(0, eq), args[i].substring(eq + 1));
    }
    return p;
  }
}
