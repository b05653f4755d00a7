//! Placement in broker mode: which node owns an order and which node is a courier's home.
//!
//! Rendezvous (highest random weight) hashing over the configured node names: every node computes
//! the same answer from the same list with no coordination, and removing one node moves only the
//! keys it had. The hash is xxh3 with a fixed seed, stable across builds and machines (unlike
//! std's `DefaultHasher`), because nodes running different builds must still agree.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Fixed so that placement never changes between releases.
const SEED: u64 = 0x7472_6163_6b6c_696e; // "trackline"

/// The weight of `key` on `node`; the node with the highest weight owns the key.
fn weight(node: &str, key: &str) -> u64 {
    let mut bytes = Vec::with_capacity(node.len() + 1 + key.len());
    bytes.extend_from_slice(node.as_bytes());
    // Ids and node names never contain NUL, so (node, key) pairs cannot collide by concatenation.
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    xxh3_64_with_seed(&bytes, SEED)
}

/// The index in `nodes` of the node that owns `key` (an order id or a courier id).
///
/// # Panics
/// When `nodes` is empty: a cluster has at least one node (the configuration checks this).
pub fn owner(key: &str, nodes: &[impl AsRef<str>]) -> usize {
    assert!(!nodes.is_empty(), "a cluster has at least one node");
    nodes
        .iter()
        .enumerate()
        // Ties (practically impossible with 64-bit weights) go to the first node listed.
        .max_by_key(|(i, node)| (weight(node.as_ref(), key), std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("trackline-{i}")).collect()
    }

    #[test]
    fn every_node_agrees_and_one_node_owns_everything() {
        let three = nodes(3);
        assert_eq!(owner("order-1", &three), owner("order-1", &three.clone()));
        assert_eq!(owner("anything", &nodes(1)), 0);
    }

    #[test]
    fn keys_spread_evenly_over_the_nodes() {
        let three = nodes(3);
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[owner(&format!("order-{i}"), &three)] += 1;
        }
        // 10,000 expected each; a binomial spread stays well within 5 %.
        for count in counts {
            assert!((9_500..=10_500).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_own_keys() {
        let three = nodes(3);
        let two: Vec<String> = three[..2].to_vec();
        for i in 0..5_000 {
            let key = format!("courier-{i}");
            let before = owner(&key, &three);
            if before < 2 {
                assert_eq!(
                    owner(&key, &two),
                    before,
                    "{key} moved although its node stayed"
                );
            }
        }
    }

    #[test]
    fn placement_is_stable_across_builds() {
        // Pinned: a change here would move every order of a running cluster.
        let three = nodes(3);
        let placed: Vec<usize> = ["o-1", "o-2", "o-3", "c-1", "c-2"]
            .iter()
            .map(|k| owner(k, &three))
            .collect();
        assert_eq!(placed, PINNED);
    }

    // Recorded from the first release of broker mode.
    const PINNED: [usize; 5] = [2, 0, 2, 0, 2];
}
