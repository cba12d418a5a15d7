//! Maglev lookup tables for the `source-hash` scheduler.
//!
//! A `source-hash` service owns a lookup table of M slots (M prime, one of [`SIZES`]). The kernel
//! sends a new connection to the backend named by slot `jhash(client address [, port]) mod M`;
//! this module computes which backend each slot names.
//!
//! The table is filled with Maglev's algorithm (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016). Every member derives from its identity a
//! preference list, a permutation of the slots: `offset + j * skip (mod M)` for `j = 0, 1, ...`,
//! where `offset` and `skip` come from two independent hashes of the identity (`skip` is never 0
//! and M is prime, so the list visits every slot exactly once). Members then take turns, each
//! claiming the next slot of its list that nobody holds yet, until the table is full. Because a
//! member's list depends only on its own identity, removing or adding a member mostly leaves the
//! other members' slots where they were: a client keeps its backend unless its backend went away,
//! or its slot is one of the few that change hands because the turn order shifted. How few
//! depends on the slots per member: on average 2.5 to 8% of the table at 10 to 20 slots per
//! member, 0.2 to 2.4% at 80 or more (the disruption tests measure it).
//!
//! Weights decide how many turns a member gets, not how it picks: see [`table`].
//!
//! Determinism: the table is a pure function of the *set* of members (identity and weight), the
//! size and the seed. It never uses std's randomly keyed hashers, floating point or the input
//! order, so two gateways with the same config and seed install the identical table, whatever the
//! machine, the build or the order the backends are listed in. The hash (FNV-1a 64 and
//! splitmix64's mixer, spelled out at `preference` below) is pinned by the tests: changing it
//! changes every table, so it would be a compatibility break between gateways that run different
//! natlb versions.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// The table sizes natlb offers. Maglev needs a prime size so that every `skip` in `1..M` makes
/// a full permutation of the slots.
pub const SIZES: [u32; 7] = [61, 127, 251, 509, 1021, 2039, 4093];

/// How many slots [`size_for`] wants per weight unit. A member's slot count is within one slot of
/// its exact share, so with at least ten slots per unit, the lightest member's share is off by at
/// most about a tenth of what its weight asks for. (More slots per member would also lower the
/// churn between remaining members when one comes or goes; see the module doc.)
pub const SLOTS_PER_UNIT: u64 = 10;

/// The table size for backends with these weights (all > 0).
///
/// Rule: divide the weights by their greatest common divisor (2:4 is the same split as 1:2), add
/// them up to get the number of weight units U, and return the smallest of [`SIZES`] that is at
/// least [`SLOTS_PER_UNIT`] × U; when none is, the largest size. Equal weights thus give ten or
/// more slots per backend up to 409 backends. No weights at all give the smallest size.
///
/// The size is a function of the weights, so adding or removing a backend may change it, and a
/// different size reshuffles the whole table; a caller that wants Maglev's small disruption on a
/// change has to keep the size stable across it.
pub fn size_for(weights: &[u32]) -> u32 {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    let units: u64 = if g == 0 {
        0
    } else {
        weights.iter().map(|&w| u64::from(w / g)).sum()
    };
    let want = units.saturating_mul(SLOTS_PER_UNIT);
    SIZES
        .iter()
        .copied()
        .find(|&m| u64::from(m) >= want)
        .unwrap_or(SIZES[SIZES.len() - 1])
}

/// One backend as Maglev sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// A stable identity; natlb passes the backend's `addr:port` string. Identities should be
    /// distinct: two members with the same identity have the same preference list.
    pub id: &'a [u8],
    /// The backend's weight (> 0).
    pub weight: u32,
}

/// Fills a table of `size` slots for `members`: entry `i` is the position in `members` of the
/// backend that slot `i` sends to. No members give an empty table.
///
/// How weights work: first each member's number of slots (its quota) is fixed by largest-remainder
/// apportionment of `size` to the weights, so every quota is within one slot of the exact share
/// `size × weight / total weight`. A positive weight never means drained, so a member whose share
/// rounds to no slot gets one, taken from the most over-served member (that can only happen when
/// its weight is under 1/`size` of the total). The members then take turns in the order of the
/// turns' midpoints: member i's turn t (t = 0, 1, ...) comes at `(2t + 1) / (2 × quota_i)`, ties
/// going to the smaller identity. With equal quotas this is plain Maglev's round robin; with
/// unequal ones every member's turns are spread evenly over the filling. That is what Envoy's
/// weighted Maglev does with a credit (a member takes a turn only when its accumulated share
/// allows), but here the counts are exact to one slot, not proportional up to a round's rounding.
///
/// Members are ranked by (identity, weight) before anything else, so the table depends on the set
/// of members and not on their order in `members`.
///
/// Panics when `size` is not prime, when it is smaller than the number of members, or when a
/// weight is 0: those are the caller's bugs (the sizes in [`SIZES`] are prime, and the config
/// makes weight 0 mean drained, so drained backends are left out).
///
/// Cost: O(size × members) in the worst case (each member's walk down its list is at most `size`
/// long), O(size × log members) for the turn order.
pub fn table(members: &[Member], size: u32, seed: u64) -> Vec<usize> {
    if members.is_empty() {
        return Vec::new();
    }
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    assert!(
        size as usize >= members.len(),
        "Maglev table size {size} is smaller than the {} members",
        members.len()
    );
    assert!(
        members.iter().all(|m| m.weight > 0),
        "Maglev members need a positive weight"
    );

    // Rank by identity: from here on only ranks are used, and the result is mapped back to input
    // positions at the very end.
    let mut by_rank: Vec<usize> = (0..members.len()).collect();
    by_rank.sort_by(|&a, &b| {
        (members[a].id, members[a].weight).cmp(&(members[b].id, members[b].weight))
    });
    let weights: Vec<u32> = by_rank.iter().map(|&i| members[i].weight).collect();
    let quotas = quotas(&weights, size);
    let mut walks: Vec<Walk> = by_rank
        .iter()
        .map(|&i| Walk::new(members[i].id, size, seed))
        .collect();

    const FREE: usize = usize::MAX;
    let mut slots = vec![FREE; size as usize];
    let mut turns: BinaryHeap<Reverse<Turn>> = quotas
        .iter()
        .enumerate()
        .filter(|&(_, &quota)| quota > 0)
        .map(|(rank, &quota)| {
            Reverse(Turn {
                taken: 0,
                quota,
                rank,
            })
        })
        .collect();
    while let Some(Reverse(mut turn)) = turns.pop() {
        // The quotas add up to `size`, so while a turn is pending some slot is free, and the
        // member's list (a permutation of all slots) reaches it.
        let walk = &mut walks[turn.rank];
        let slot = loop {
            let s = walk.next();
            if slots[s] == FREE {
                break s;
            }
        };
        slots[slot] = by_rank[turn.rank];
        turn.taken += 1;
        if turn.taken < turn.quota {
            turns.push(Reverse(turn));
        }
    }
    debug_assert!(slots.iter().all(|&s| s != FREE));
    slots
}

/// Each ranked member's number of slots: largest-remainder apportionment of `size` to `weights`
/// (ties to the lower rank), then at least one slot per member.
fn quotas(weights: &[u32], size: u32) -> Vec<u32> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let m = u128::from(size);
    // Exact share of member i = m × w_i / total; all arithmetic stays in integers so that it is
    // the same everywhere.
    let mut quotas: Vec<u32> = weights
        .iter()
        .map(|&w| (m * u128::from(w) / total) as u32)
        .collect();
    let left = size - quotas.iter().sum::<u32>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
    by_remainder.sort_by_key(|&i| (Reverse(m * u128::from(weights[i]) % total), i));
    for &i in by_remainder.iter().take(left as usize) {
        quotas[i] += 1;
    }
    // Over-service of member i, scaled by `total`: quota_i × total − m × w_i.
    let over = |quotas: &[u32], i: usize| -> i128 {
        (u128::from(quotas[i]) * total) as i128 - (m * u128::from(weights[i])) as i128
    };
    for i in 0..weights.len() {
        if quotas[i] == 0 {
            // size >= members and some quota is 0, so some other quota is at least 2.
            let donor = (0..weights.len())
                .filter(|&j| quotas[j] > 1)
                .max_by(|&a, &b| over(&quotas, a).cmp(&over(&quotas, b)).then(b.cmp(&a)))
                .expect("size >= number of members");
            quotas[donor] -= 1;
            quotas[i] = 1;
        }
    }
    quotas
}

/// A member's pending turn. Turns are served smallest first: by the midpoint of the member's next
/// slot within its quota, `(2 × taken + 1) / (2 × quota)`, compared exactly by cross
/// multiplication, then by rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Turn {
    taken: u32,
    quota: u32,
    rank: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // u128: with quotas up to u32::MAX the products need 65 bits.
        let mine = (2 * u128::from(self.taken) + 1) * u128::from(other.quota);
        let theirs = (2 * u128::from(other.taken) + 1) * u128::from(self.quota);
        mine.cmp(&theirs).then(self.rank.cmp(&other.rank))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A member's position in its preference list.
struct Walk {
    next: u64,
    skip: u64,
    size: u64,
}

impl Walk {
    fn new(id: &[u8], size: u32, seed: u64) -> Walk {
        let (offset, skip) = preference(id, size, seed);
        Walk {
            next: u64::from(offset),
            skip: u64::from(skip),
            size: u64::from(size),
        }
    }

    /// The member's next preferred slot.
    fn next(&mut self) -> usize {
        let slot = self.next;
        self.next = (self.next + self.skip) % self.size;
        slot as usize
    }
}

/// A member's preference list, as (offset, skip): slot j of the list is
/// `(offset + j × skip) mod size`, with `offset = h(id, 0) mod size` and
/// `skip = h(id, 1) mod (size − 1) + 1`.
///
/// `h(id, d)` is FNV-1a 64 over the bytes `seed` (8 bytes, little endian), `d` (one byte: 0 for
/// the offset, 1 for the skip) and `id`, finished with splitmix64's mixer so that ids that differ
/// in one byte (consecutive addresses) get unrelated values. Both are fixed, published algorithms
/// on fixed byte layouts, hence the same on every machine and build.
fn preference(id: &[u8], size: u32, seed: u64) -> (u32, u32) {
    let m = u64::from(size);
    let offset = hash(id, seed, 0) % m;
    // `table` only passes primes, so m >= 2 and the skip is in 1..m.
    let skip = hash(id, seed, 1) % (m - 1) + 1;
    (offset as u32, skip as u32)
}

fn hash(id: &[u8], seed: u64, domain: u8) -> u64 {
    let state = fnv1a64(FNV_OFFSET_BASIS, &seed.to_le_bytes());
    let state = fnv1a64(state, &[domain]);
    splitmix64_mix(fnv1a64(state, id))
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64, continuing from `state` (the offset basis to start a hash).
fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// splitmix64's output function (one step of the generator: add the golden gamma, then mix).
fn splitmix64_mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' own random numbers (splitmix64, with the mixer above), so that their inputs,
    /// and with them the measured numbers, depend on nothing outside this file.
    struct Rng(u64);

    impl Rng {
        fn u64(&mut self) -> u64 {
            let x = splitmix64_mix(self.0);
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            x
        }

        /// A number in `lo..=hi` (the modulo bias is negligible at these ranges).
        fn within(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.u64() % (hi - lo + 1)
        }

        fn shuffle<T>(&mut self, xs: &mut [T]) {
            for i in (1..xs.len()).rev() {
                xs.swap(i, self.within(0, i as u64) as usize);
            }
        }
    }

    /// `n` distinct backend identities that look like natlb's (`addr:port`), drawn from `rng`.
    fn random_ids(n: usize, rng: &mut Rng) -> Vec<String> {
        let mut ids: Vec<String> = Vec::with_capacity(n);
        while ids.len() < n {
            let id = format!(
                "10.{}.{}.{}:{}",
                rng.within(0, 255),
                rng.within(0, 255),
                rng.within(1, 254),
                [80, 443, 8080][rng.within(0, 2) as usize]
            );
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    fn weighted<'a>(ids: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
        assert_eq!(ids.len(), weights.len());
        ids.iter()
            .zip(weights)
            .map(|(id, &weight)| Member {
                id: id.as_bytes(),
                weight,
            })
            .collect()
    }

    fn equal(ids: &[String]) -> Vec<Member<'_>> {
        weighted(ids, &vec![1; ids.len()])
    }

    fn without<'a>(members: &[Member<'a>], gone: usize) -> Vec<Member<'a>> {
        let mut rest = members.to_vec();
        rest.remove(gone);
        rest
    }

    /// Slot -> identity of its owner: what survives a change of member order or membership.
    fn owners<'a>(table: &[usize], members: &[Member<'a>]) -> Vec<&'a [u8]> {
        table.iter().map(|&i| members[i].id).collect()
    }

    fn counts(table: &[usize], n: usize) -> Vec<u32> {
        let mut c = vec![0; n];
        for &i in table {
            c[i] += 1;
        }
        c
    }

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    fn max(xs: &[f64]) -> f64 {
        xs.iter().copied().fold(f64::MIN, f64::max)
    }

    fn min(xs: &[f64]) -> f64 {
        xs.iter().copied().fold(f64::MAX, f64::min)
    }

    // ---- The hash: fixed, so that gateways agree. ----

    #[test]
    fn hash_is_the_documented_one() {
        // Reference values of the published algorithms: FNV-1a 64 from the FNV test suite,
        // splitmix64's first output for seed 0.
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(splitmix64_mix(0), 0xe220_a839_7b1d_cdaf);
        // natlb's layout on top of them (seed LE, domain byte, id): pinned, because a change here
        // changes every table and makes gateways of different versions disagree.
        assert_eq!(hash(b"10.0.1.11:8080", 0, 0), 0x8913_f657_4510_965e);
        assert_eq!(hash(b"10.0.1.11:8080", 0, 1), 0xcb51_44e0_f97d_f728);
        assert_eq!(hash(b"10.0.1.11:8080", 42, 0), 0xf12f_823c_4e8a_d1d2);
        assert_eq!(hash(b"10.0.1.12:8080", 0, 0), 0x0363_bd59_b2d4_0e42);
        // The offset and skip fed to the walk come from it as documented.
        let (offset, skip) = preference(b"10.0.1.11:8080", 61, 0);
        assert_eq!(u64::from(offset), hash(b"10.0.1.11:8080", 0, 0) % 61);
        assert_eq!(u64::from(skip), hash(b"10.0.1.11:8080", 0, 1) % 60 + 1);
    }

    #[test]
    fn pinned_tables() {
        let ids: Vec<String> = ["10.0.1.11:8080", "10.0.1.12:8080", "10.0.1.13:8080"]
            .map(String::from)
            .to_vec();
        // Pinned like the hash: the whole pipeline (hash, quotas, turn order) on fixed inputs.
        assert_eq!(
            table(&equal(&ids), 13, 7),
            [1, 2, 1, 1, 0, 0, 2, 2, 2, 1, 0, 0, 0]
        );
        let t = table(&weighted(&ids, &[1, 2, 5]), 61, 7);
        assert_eq!(
            t,
            [
                1, 1, 2, 2, 0, 2, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 2, 1, 0, 0,
                2, 1, 2, 2, 0, 1, 2, 2, 1, 0, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1, 2, 1, 2, 1, 1,
                0, 2, 1, 0, 0
            ]
        );
        // 61 × (1, 2, 5) / 8 = (7.625, 15.25, 38.125): floors 7 + 15 + 38 = 60, and the one slot
        // left goes to the largest remainder.
        assert_eq!(counts(&t, 3), [8, 15, 38]);
    }

    // ---- Determinism. ----

    #[test]
    fn same_inputs_give_the_same_table_and_the_seed_changes_it() {
        let mut rng = Rng(11);
        let ids = random_ids(10, &mut rng);
        let members = equal(&ids);
        let size = size_for(&[1; 10]);
        let mut agree = Vec::new();
        for seed in 0..20 {
            let t = table(&members, size, seed);
            assert_eq!(t, table(&members, size, seed));
            let other = table(&members, size, seed + 1);
            // Two unrelated tables of 10 equal members agree on about 1/10 of the slots.
            let same = t.iter().zip(&other).filter(|(a, b)| a == b).count();
            agree.push(same as f64 / f64::from(size));
        }
        println!(
            "seed s vs s+1, 10 members, M={size}: same owner in {:.1}% of slots on average, \
             {:.1}% at most",
            100.0 * mean(&agree),
            100.0 * max(&agree)
        );
        assert!(mean(&agree) < 0.2, "{agree:?}");
        assert!(max(&agree) < 0.3, "{agree:?}");
    }

    #[test]
    fn member_order_does_not_matter() {
        let mut rng = Rng(12);
        for n in [2, 3, 10, 64, 256] {
            let ids = random_ids(n, &mut rng);
            let weights: Vec<u32> = (0..n).map(|_| rng.within(1, 20) as u32).collect();
            let members = weighted(&ids, &weights);
            let size = size_for(&weights);
            let reference = owners(&table(&members, size, 5), &members);
            for _ in 0..5 {
                let mut shuffled = members.clone();
                rng.shuffle(&mut shuffled);
                let t = table(&shuffled, size, 5);
                assert_eq!(owners(&t, &shuffled), reference, "n = {n}");
            }
            let mut reversed = members.clone();
            reversed.reverse();
            assert_eq!(owners(&table(&reversed, size, 5), &reversed), reference);
        }
    }

    // ---- Shape and contract. ----

    #[test]
    fn empty_single_and_full() {
        assert_eq!(table(&[], 61, 0), Vec::<usize>::new());
        let one = [Member {
            id: b"10.0.0.1:80",
            weight: 7,
        }];
        for size in SIZES {
            assert_eq!(table(&one, size, 3), vec![0; size as usize]);
        }
        // Any prime works, down to one slot per member.
        let ids: Vec<String> = (0..13).map(|i| format!("10.0.0.{i}:80")).collect();
        for (n, size) in [(1, 2), (2, 2), (3, 3), (13, 13), (5, 13)] {
            let t = table(&equal(&ids[..n]), size, 1);
            assert_eq!(t.len(), size as usize);
            assert!(counts(&t, n).iter().all(|&c| c >= 1));
        }
    }

    #[test]
    #[should_panic(expected = "not prime")]
    fn size_must_be_prime() {
        table(
            &[Member {
                id: b"a",
                weight: 1,
            }],
            60,
            0,
        );
    }

    #[test]
    #[should_panic(expected = "smaller than the 3 members")]
    fn size_must_fit_the_members() {
        let m = |id| Member { id, weight: 1 };
        table(&[m(b"a"), m(b"b"), m(b"c")], 2, 0);
    }

    #[test]
    #[should_panic(expected = "positive weight")]
    fn weights_must_be_positive() {
        table(
            &[Member {
                id: b"a",
                weight: 0,
            }],
            61,
            0,
        );
    }

    // ---- Balance. ----

    #[test]
    fn equal_weights_are_balanced_within_one_slot() {
        let mut rng = Rng(21);
        for n in [1, 2, 3, 5, 10, 16, 64, 256] {
            let size = size_for(&vec![1; n]);
            let (lo, hi) = (size / n as u32, size.div_ceil(n as u32));
            for seed in 0..5 {
                let ids = random_ids(n, &mut rng);
                let c = counts(&table(&equal(&ids), size, seed), n);
                let (cmin, cmax) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
                if seed == 0 {
                    println!("equal weights, N={n} M={size}: {cmin}..={cmax} slots each");
                }
                assert!(lo <= cmin && cmax <= hi, "N={n} M={size}: {c:?}");
            }
        }
    }

    /// The largest |slots − exact share| in slots, and the largest |share − weight share| in
    /// percentage points.
    fn weighted_error(weights: &[u32], size: u32, seed: u64, rng: &mut Rng) -> (f64, f64) {
        let ids = random_ids(weights.len(), rng);
        let c = counts(&table(&weighted(&ids, weights), size, seed), weights.len());
        assert_eq!(c.iter().sum::<u32>(), size);
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let m = f64::from(size);
        let slots = weights
            .iter()
            .zip(&c)
            .map(|(&w, &c)| (f64::from(c) - m * f64::from(w) / total).abs())
            .fold(0.0, f64::max);
        (slots, 100.0 * slots / m)
    }

    #[test]
    fn weighted_shares_are_within_one_slot() {
        let mut rng = Rng(22);
        let named: [(&str, Vec<u32>); 4] = [
            ("3:1", vec![3, 1]),
            ("1:2:5", vec![1, 2, 5]),
            ("1..=10", (1..=10).collect()),
            ("1000:999:1", vec![1000, 999, 1]),
        ];
        for (name, weights) in &named {
            for size in SIZES.into_iter().filter(|&s| s as usize >= weights.len()) {
                let (slots, pp) = weighted_error(weights, size, 1, &mut rng);
                if size == size_for(weights) {
                    println!(
                        "weights {name}, M={size}: worst member off by {slots:.3} slots \
                         = {pp:.3} pp"
                    );
                }
                // Largest-remainder apportionment: every count is within one slot of its exact
                // share, which at M >= 61 is also within 1.7 percentage points.
                assert!(slots < 1.0, "{name} M={size}: {slots}");
                assert!(pp < 2.0);
            }
        }
        // Random weight sets over natlb's whole weight range, where no exact share is under one
        // slot (below that the minimum of one slot applies, see the next test).
        let mut worst: f64 = 0.0;
        for _ in 0..300 {
            let n = rng.within(1, 64) as usize;
            let weights: Vec<u32> = (0..n).map(|_| rng.within(1, 10_000) as u32).collect();
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            for size in [size_for(&weights), 4093] {
                let min_share = u64::from(size) * u64::from(*weights.iter().min().unwrap());
                if min_share < total {
                    continue;
                }
                let (slots, _) = weighted_error(&weights, size, rng.u64(), &mut rng);
                worst = worst.max(slots);
                assert!(slots < 1.0, "{weights:?} M={size}: {slots}");
            }
        }
        println!("300 random weight sets: worst member off by {worst:.3} slots");
    }

    #[test]
    fn quotas_are_largest_remainder() {
        // Within one slot is also true of worse roundings; largest remainder is the one where a
        // member is rounded up only if no member rounded down had a larger remainder.
        let mut rng = Rng(23);
        for _ in 0..300 {
            let n = rng.within(1, 64) as usize;
            let weights: Vec<u32> = (0..n).map(|_| rng.within(1, 100) as u32).collect();
            let size = size_for(&weights);
            let q = quotas(&weights, size);
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let exact = |i: usize| u64::from(size) * u64::from(weights[i]);
            if (0..n).any(|i| exact(i) < total) {
                continue; // the minimum of one slot applies, tested below
            }
            assert_eq!(q.iter().sum::<u32>(), size);
            let up: Vec<bool> = (0..n)
                .map(|i| {
                    let floor = exact(i) / total;
                    assert!(u64::from(q[i]) == floor || u64::from(q[i]) == floor + 1);
                    u64::from(q[i]) > floor
                })
                .collect();
            for i in (0..n).filter(|&i| up[i]) {
                for j in (0..n).filter(|&j| !up[j]) {
                    assert!(exact(i) % total >= exact(j) % total, "{weights:?} {q:?}");
                }
            }
        }
    }

    #[test]
    fn a_positive_weight_always_gets_a_slot() {
        // 61 × 1 / 20001 ≈ 0.003 slots rounds to none, but weight 0 is how natlb drains a
        // backend, so a positive weight must keep it reachable.
        let ids: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:80")).collect();
        let c = counts(&table(&weighted(&ids[..3], &[10_000, 10_000, 1]), 61, 0), 3);
        assert_eq!(c[2], 1);
        assert_eq!(c[0] + c[1], 60);
        assert!(c[0].abs_diff(c[1]) <= 1, "{c:?}");
        let c = counts(&table(&weighted(&ids, &[10_000, 1, 1, 1]), 61, 0), 4);
        assert_eq!(c, [58, 1, 1, 1]);
    }

    // ---- Disruption. ----
    //
    // Maglev keeps a remaining member's slots in place only approximately: removing or adding a
    // member changes the turn order, and some slots change hands between members that stayed.
    // How many depends on the slots per member: the tests below measure it at the size `size_for`
    // picks (10 to 20 slots per member) and at the largest size, over 60 random id sets and seeds
    // (on removal, up to ten members of each set removed in turn). Measured when written
    // (`cargo test --lib maglev -- --nocapture` prints them), in % of M:
    //
    //   remove 1 of N          3      5      10     16     50
    //   size_for M             61     61     127    251    509
    //     other slots moved    2.5    6.0    7.8    6.2    5.5    mean
    //                          4.9    9.8    10.2   8.0    6.7    90th percentile
    //                          13.1   24.6   18.1   14.3   8.1    worst
    //   M = 4093               0.2    0.8    1.2    1.4    2.4    mean
    //                          0.5    0.8    1.4    1.6    2.6    90th percentile
    //                          1.7    15.8   3.0    2.0    3.5    worst
    //
    //   add 1 to N             3      5      10     16     50
    //   size_for(N + 1) M      61     61     127    251    1021
    //     other slots moved    4.8    7.5    7.3    6.8    4.9    mean
    //                          8.2    11.5   10.2   8.4    5.6    90th percentile
    //                          13.1   23.0   13.4   10.8   6.4    worst
    //   M = 4093               0.4    0.7    1.2    1.5    2.4    mean
    //                          0.6    0.9    1.3    1.8    2.7    90th percentile
    //                          1.7    1.2    4.5    2.4    3.4    worst
    //
    // The mean and the 90th percentile barely move with other random inputs (seven input sets
    // tried: means within 1 point, 90th percentiles within 2), so those are what the tests
    // assert, with margin: at M = 4093, mean < 3% and 90th percentile < 3.5%; at size_for's
    // sizes, mean < 10% and 90th percentile < 18%. The worst case is a heavy tail that does move
    // (up to 46% of M at N = 3, M = 61 with other inputs): it comes from members whose
    // preference lists run in step (same skip, or related ones), so that one change cascades
    // along them. It is only printed.

    /// Sizes the disruption tests look at for `n` members: what `size_for` picks, and the largest.
    fn disruption_sizes(n: usize) -> [u32; 2] {
        [size_for(&vec![1; n]), SIZES[SIZES.len() - 1]]
    }

    /// The `q` quantile of `xs` (nearest rank).
    fn quantile(xs: &[f64], q: f64) -> f64 {
        let mut sorted = xs.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    /// Mean, 90th percentile and worst of `xs`, as percentages, for the printout.
    fn spread(xs: &[f64]) -> String {
        format!(
            "mean {:5.2}%, p90 {:5.2}%, worst {:5.2}%",
            100.0 * mean(xs),
            100.0 * quantile(xs, 0.9),
            100.0 * max(xs)
        )
    }

    #[test]
    fn removing_a_member_moves_few_other_slots() {
        let mut rng = Rng(31);
        for n in [3, 5, 10, 16, 50] {
            for size in disruption_sizes(n) {
                // Per removal: fraction of all slots that changed owner although the owner stayed.
                let mut extra = Vec::new();
                for seed in 0..60 {
                    let ids = random_ids(n, &mut rng);
                    let all = equal(&ids);
                    let before = owners(&table(&all, size, seed), &all);
                    // Ten removals per id set (the ids are random, so any ten will do) keep the
                    // test quick at N = 50.
                    for gone in 0..n.min(10) {
                        let rest = without(&all, gone);
                        let after = owners(&table(&rest, size, seed), &rest);
                        let mut moved = 0;
                        for (b, a) in before.iter().zip(&after) {
                            if *b == all[gone].id {
                                // The removed member's slots go to the remaining ones.
                                assert!(rest.iter().any(|m| m.id == *a));
                            } else if b != a {
                                moved += 1;
                            }
                        }
                        extra.push(moved as f64 / f64::from(size));
                    }
                }
                println!(
                    "remove 1 of N={n:2}, M={size:4}: other slots moved, of M: {} \
                     (the removed member held {:5.2}%)",
                    spread(&extra),
                    100.0 / n as f64
                );
                let (avg, p90) = (mean(&extra), quantile(&extra, 0.9));
                if size == 4093 {
                    assert!(avg < 0.03 && p90 < 0.035, "N={n} M={size}: {avg} {p90}");
                } else {
                    assert!(avg < 0.10 && p90 < 0.18, "N={n} M={size}: {avg} {p90}");
                }
            }
        }
    }

    #[test]
    fn adding_a_member_takes_its_share_from_everyone() {
        let mut rng = Rng(32);
        for n in [3, 5, 10, 16, 50] {
            for size in disruption_sizes(n + 1) {
                let share = f64::from(size) / (n + 1) as f64;
                // What each old member should lose to the newcomer: M/N - M/(N+1).
                let fair_loss = f64::from(size) / (n * (n + 1)) as f64;
                let mut extra = Vec::new();
                let mut loss_ratio = Vec::new();
                let mut donors = Vec::new();
                for seed in 0..60 {
                    let ids = random_ids(n + 1, &mut rng);
                    let all = equal(&ids);
                    let old = &all[..n];
                    let new = all[n].id;
                    let before = owners(&table(old, size, seed), old);
                    let after = owners(&table(&all, size, seed), &all);
                    let taken = after.iter().filter(|&&a| a == new).count();
                    assert!((taken as f64 - share).abs() < 1.0, "took {taken} of {size}");
                    let mut lost = vec![0u32; n];
                    let mut moved = 0;
                    for (b, a) in before.iter().zip(&after) {
                        if *a == new {
                            lost[old.iter().position(|m| m.id == *b).unwrap()] += 1;
                        } else if b != a {
                            moved += 1;
                        }
                    }
                    extra.push(moved as f64 / f64::from(size));
                    loss_ratio.extend(lost.iter().map(|&l| f64::from(l) / fair_loss));
                    // Of the old members that could have given a slot, the share that did.
                    let gave = lost.iter().filter(|&&l| l > 0).count();
                    donors.push(gave as f64 / n.min(taken) as f64);
                }
                println!(
                    "add 1 to N={n:2}, M={size:4}: took {share:6.1} ± 1 slots from {:3.0}% \
                     of the old members (mean; worst {:3.0}%); loss / fair loss p10..p90 \
                     {:.2}..{:.2}; other slots moved, of M: {}",
                    100.0 * mean(&donors),
                    100.0 * min(&donors),
                    quantile(&loss_ratio, 0.1),
                    quantile(&loss_ratio, 0.9),
                    spread(&extra)
                );
                let (avg, p90) = (mean(&extra), quantile(&extra, 0.9));
                // Most old members give some: all of them, bar tail cases, when their fair loss
                // is many slots; at fair losses of one or two slots, some give none by chance.
                assert!(mean(&donors) > 0.6, "N={n} M={size}: {donors:?}");
                if size == 4093 {
                    assert!(avg < 0.03 && p90 < 0.035, "N={n} M={size}: {avg} {p90}");
                    if n <= 16 {
                        assert!(mean(&donors) > 0.95, "N={n}: {donors:?}");
                        // Fair losses of 15 slots or more, so the ratio is meaningful: most old
                        // members give between half and 1.5 times their part.
                        let (p10, p90) = (quantile(&loss_ratio, 0.1), quantile(&loss_ratio, 0.9));
                        assert!(p10 > 0.5 && p90 < 1.5, "N={n}: {p10} {p90}");
                    }
                } else {
                    assert!(avg < 0.10 && p90 < 0.18, "N={n} M={size}: {avg} {p90}");
                }
            }
        }
    }

    // ---- size_for. ----

    #[test]
    fn size_for_follows_the_rule() {
        assert_eq!(size_for(&[]), 61);
        assert_eq!(size_for(&[1, 1]), 61);
        assert_eq!(size_for(&[5]), 61);
        assert_eq!(size_for(&[300, 100]), 61); // 3:1, 4 units
        assert_eq!(size_for(&[1; 7]), 127); // 70 slots wanted
        assert_eq!(size_for(&[1, 2, 5]), 127); // 8 units
        assert_eq!(size_for(&(1..=10).collect::<Vec<_>>()), 1021); // 55 units
        assert_eq!(size_for(&[1; 256]), 4093);
        assert_eq!(size_for(&[1; 409]), 4093);
        assert_eq!(size_for(&[1; 1000]), 4093); // capped
        assert_eq!(size_for(&[10_000, 1]), 4093);
        assert_eq!(size_for(&[u32::MAX, 1]), 4093); // no overflow
        let mut last = 0;
        for n in 1..=500 {
            let size = size_for(&vec![1; n]);
            assert!(size >= last, "not monotone at {n}");
            assert!(SIZES.contains(&size));
            assert!(u64::from(size) >= SLOTS_PER_UNIT * n as u64 || size == 4093);
            last = size;
        }
        // Every size offered is prime, as Maglev needs.
        assert!(SIZES.iter().all(|&s| is_prime(s)));
        assert!(!is_prime(1) && !is_prime(0) && !is_prime(4095) && is_prime(2));
    }
}
