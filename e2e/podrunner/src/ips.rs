//! Pod IPs: each pod gets its own address in 127.1.0.0/16 (all of 127/8 is
//! loopback on Linux), so pods can listen on the same port side by side.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

#[derive(Debug, Default)]
pub struct Allocator {
    used: BTreeSet<Ipv4Addr>,
}

fn in_range(ip: Ipv4Addr) -> bool {
    let [a, b, _, d] = ip.octets();
    a == 127 && b == 1 && (2..255).contains(&d)
}

impl Allocator {
    /// Keeps the pod's previous address when it is free (a runner restart
    /// should not renumber running pods), else takes the lowest free one.
    pub fn allocate(&mut self, previous: Option<&str>) -> Option<String> {
        if let Some(ip) = previous.and_then(|p| p.parse::<Ipv4Addr>().ok()) {
            if in_range(ip) && self.used.insert(ip) {
                return Some(ip.to_string());
            }
        }
        let free = (0..=255u8)
            .flat_map(|c| (2..255u8).map(move |d| Ipv4Addr::new(127, 1, c, d)))
            .find(|ip| !self.used.contains(ip))?;
        self.used.insert(free);
        Some(free.to_string())
    }

    pub fn release(&mut self, ip: &str) {
        if let Ok(ip) = ip.parse() {
            self.used.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_addresses_and_reuses_released_and_previous_ones() {
        let mut a = Allocator::default();
        assert_eq!(a.allocate(None).as_deref(), Some("127.1.0.2"));
        assert_eq!(a.allocate(Some("127.1.7.9")).as_deref(), Some("127.1.7.9"));
        assert_eq!(
            a.allocate(Some("127.1.7.9")).as_deref(),
            Some("127.1.0.3"),
            "a taken previous address is not shared"
        );
        assert_eq!(
            a.allocate(Some("10.0.0.1")).as_deref(),
            Some("127.1.0.4"),
            "foreign addresses are ignored"
        );
        a.release("127.1.0.2");
        assert_eq!(a.allocate(None).as_deref(), Some("127.1.0.2"));
    }
}
