//! Stable GPU UUIDs for simulated machines. A simulated node must report the same UUIDs
//! after a restart (the agent re-attaches jobs by UUID and the scheduler's log names them),
//! and two nodes must never share one, so a UUID is a pure function of (seed, GPU index).
//! The hash is FNV-1a written out here, not std's `DefaultHasher`, whose output may change
//! between Rust releases; a golden value in the tests pins it.

/// FNV-1a 128-bit parameters (<http://www.isthe.com/chongo/tech/comp/fnv/>).
const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

/// Separates the seed from the index in the hashed bytes. 0xff never occurs in UTF-8, so no
/// (seed, index) pair can produce the bytes of another.
const SEPARATOR: u8 = 0xff;

/// The UUID of GPU `index` on a machine seeded with `seed`, formatted like NVML's:
/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase hex.
pub(crate) fn derive_gpu_uuid(seed: &str, index: usize) -> String {
    let index = u64::try_from(index).unwrap_or(u64::MAX);
    let bytes = seed.bytes().chain([SEPARATOR]).chain(index.to_le_bytes());
    format_gpu_uuid(scramble(fnv1a_128(bytes)))
}

/// Whether `text` has the form [`derive_gpu_uuid`] produces. Uppercase hex is refused:
/// NVML prints lowercase, and a description that differs only in case would look like two
/// different GPUs to anything comparing strings.
pub(crate) fn is_gpu_uuid(text: &str) -> bool {
    let Some(body) = text.strip_prefix("GPU-") else {
        return false;
    };
    let groups: Vec<&str> = body.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == lengths.len()
        && groups.iter().zip(lengths).all(|(group, length)| {
            group.len() == length
                && group
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn fnv1a_128(bytes: impl IntoIterator<Item = u8>) -> u128 {
    bytes.into_iter().fold(FNV128_OFFSET, |hash, byte| {
        (hash ^ u128::from(byte)).wrapping_mul(FNV128_PRIME)
    })
}

/// FNV-1a on inputs that differ only in their last bytes (index 0 vs 1) leaves most output
/// bits equal, so sibling GPUs would get near-identical UUIDs. Two Feistel rounds of the
/// murmur3 finaliser spread every input bit over all 128 bits; being a bijection, they keep
/// distinct hashes distinct.
fn scramble(hash: u128) -> u128 {
    let (mut high, mut low) = ((hash >> 64) as u64, hash as u64);
    low = fmix64(low ^ high.rotate_left(32));
    high = fmix64(high ^ low);
    (u128::from(high) << 64) | u128::from(low)
}

/// murmur3's 64-bit finaliser: a bijection with full avalanche.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

fn format_gpu_uuid(value: u128) -> String {
    let hex = format!("{value:032x}");
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 128 test vectors: "" and "a".
        assert_eq!(fnv1a_128([]), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(
            fnv1a_128(*b"a"),
            0xd228cb696f1a8caf78912b704e4a8964,
            "FNV-1a of \"a\""
        );
    }

    #[test]
    fn derived_uuid_is_pinned() {
        // Changing the derivation renames every simulated GPU of every existing dev
        // cluster; if this fails on purpose, say so in the changelog.
        let got = derive_gpu_uuid("node1", 0);
        assert_eq!(got, GOLDEN_NODE1_GPU0, "derive_gpu_uuid(\"node1\", 0)");
    }

    /// Computed independently (Python, same algorithm) when the derivation was written.
    const GOLDEN_NODE1_GPU0: &str = "GPU-19304270-711e-a128-2f38-96b0c722d503";

    #[test]
    fn derived_uuids_are_well_formed_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for seed in ["node1", "node2", "node10", "a", ""] {
            for index in 0..64 {
                let uuid = derive_gpu_uuid(seed, index);
                assert!(
                    is_gpu_uuid(&uuid),
                    "{uuid} is not GPU-8-4-4-4-12 lowercase hex"
                );
                assert!(
                    seen.insert(uuid.clone()),
                    "{uuid} repeated at ({seed:?}, {index})"
                );
            }
        }
    }

    #[test]
    fn same_seed_same_uuid_different_seed_different_uuid() {
        assert_eq!(derive_gpu_uuid("n", 3), derive_gpu_uuid("n", 3));
        assert_ne!(derive_gpu_uuid("n", 3), derive_gpu_uuid("m", 3));
        assert_ne!(derive_gpu_uuid("n", 3), derive_gpu_uuid("n", 4));
    }

    #[test]
    fn sibling_uuids_differ_in_most_characters() {
        // The reason for `scramble`: without it these share all but a few hex digits.
        let (a, b) = (derive_gpu_uuid("node1", 0), derive_gpu_uuid("node1", 1));
        let same = a.chars().zip(b.chars()).filter(|(x, y)| x == y).count();
        assert!(same < 16, "{a} and {b} share {same} of 40 characters");
    }

    #[test]
    fn uuid_shape_is_checked() {
        let table = [
            ("GPU-12345678-9abc-def0-1234-56789abcdef0", true),
            ("GPU-12345678-9ABC-def0-1234-56789abcdef0", false),
            ("MIG-12345678-9abc-def0-1234-56789abcdef0", false),
            ("GPU-12345678-9abc-def0-1234-56789abcdef", false),
            ("GPU-12345678-9abc-def0-1234-56789abcdef0-", false),
            ("GPU-1234567g-9abc-def0-1234-56789abcdef0", false),
            ("", false),
        ];
        for (i, (text, want)) in table.iter().enumerate() {
            let got = is_gpu_uuid(text);
            assert_eq!(
                got, *want,
                "#{i}: is_gpu_uuid({text:?}): want {want}, got {got}"
            );
        }
    }
}
