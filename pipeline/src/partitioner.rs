//! Which partition a producer puts a keyed record in, for finding the task
//! that holds a key (queries). Java clients and Kafka Streams hash the key
//! with murmur2; librdkafka's default (`consistent_random`: Python, Go,
//! .NET, kcat) with CRC32. Millrace's own repartition writes use murmur2.

/// Kafka's `Utils.murmur2` (the Java client's default partitioner).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition a Java client (or librdkafka's `murmur2_random`) gives a
/// keyed record among `partitions`.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as u32 % partitions.max(1) as u32) as i32
}

/// The partition librdkafka's default partitioner (`consistent_random`)
/// gives a keyed record among `partitions`.
pub fn crc32_partition(key: &[u8], partitions: i32) -> i32 {
    (crc32fast::hash(key) % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_clients() {
        // Kafka's own test vectors (UtilsTest.testMurmur2).
        for (data, hash) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(murmur2(data), hash, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn partitions_are_in_range_and_the_two_partitioners_differ() {
        for key in [&b"c1"[..], b"", b"region-eu"] {
            for n in [1, 4, 7] {
                assert!((0..n).contains(&murmur2_partition(key, n)));
                assert!((0..n).contains(&crc32_partition(key, n)));
            }
        }
        let differ = (0..50)
            .map(|i| format!("k{i}"))
            .filter(|k| murmur2_partition(k.as_bytes(), 8) != crc32_partition(k.as_bytes(), 8))
            .count();
        assert!(differ > 25, "{differ} of 50 keys differ");
    }
}
