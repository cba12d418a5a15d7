//! nft: encode natlb's table as nf_tables netlink messages, send them as one batch, and read the
//! table back. The only code that touches the kernel's tables, and only natlb's own table.

pub mod batch;
pub mod dump;
pub mod encode;
pub mod error;
pub mod socket;
pub mod udata;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nftnl::MsgType;

use crate::render::egress;
use crate::render::ruleset::{
    Entry, Expr, RuleSpec, Ruleset, SetSpec, Value, concat_len, decode_values,
};
use encode::{ChainMsg, RuleMsg, SetMsg, TableMsg};
pub use error::{KernelError, NftError};

/// Element changes to one set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetDelta {
    pub set: String,
    pub remove: Vec<Vec<Value>>,
    pub add: Vec<(Vec<Value>, Entry)>,
}

/// An element the kernel added to a dynamic map: its key and its data.
pub type KernelEntry = (Vec<Value>, Vec<Value>);

/// An element of a counting map: key, data, and its counter's (packets, bytes).
pub type CountedEntry = (Vec<Value>, Vec<Value>, (u64, u64));

/// One step of a transaction. A transaction is a list of steps sent as one batch.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Remove table `inet NAME` if it exists (NEWTABLE then DELTABLE: no error if absent).
    DropTable(&'a str),
    /// Create the whole table. After `DropTable` of the same name this is an atomic replace.
    CreateTable(&'a Ruleset),
    /// Element deltas in an existing table.
    Elements {
        table: &'a str,
        deltas: &'a [SetDelta],
    },
    /// Replaces the rules of the egress chain with the fixed ones and `desired.egress`.
    Egress(&'a Ruleset),
    /// Deletes elements the kernel filled (sticky entries), if they still exist: an entry can
    /// time out between natlb reading it and the commit.
    Forget {
        table: &'a str,
        set: &'a str,
        keys: &'a [Vec<Value>],
    },
}

/// What a commit cost.
#[derive(Debug, Clone, Copy)]
pub struct CommitStats {
    pub messages: usize,
    pub bytes: usize,
    /// Time to build the batch in user space.
    pub encode: Duration,
    /// Time from sending the batch to the kernel's last answer: the kernel's commit.
    pub kernel: Duration,
    pub generation: u32,
}

/// What natlb finds under its table's name.
#[derive(Debug)]
pub enum Installed {
    Absent,
    /// A table natlb did not create (its comment does not say so). natlb leaves it alone.
    NotNatlb {
        comment: String,
    },
    /// natlb's table, but one it cannot adopt element by element (another layout version, a
    /// rule or set that differs, an element it cannot read): it is replaced as a whole,
    /// atomically.
    Foreign {
        reason: String,
    },
    Ours(Ruleset),
    /// natlb's table, adoptable, but its egress chain does not hold the rules natlb would write
    /// (another egress config, or a rule changed by hand): adoption rewrites that chain.
    OursOtherEgress(Ruleset),
}

/// How every table natlb creates begins its comment.
pub const COMMENT_PREFIX: &str = "managed by natlb;";

pub struct Nft {
    sock: socket::Socket,
}

fn describe(key: &[Value]) -> String {
    key.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(" . ")
}

impl Nft {
    pub fn open() -> Result<Nft, NftError> {
        Ok(Nft {
            sock: socket::Socket::open()?,
        })
    }

    /// Builds the changes into one batch and commits it: the kernel applies all or nothing.
    pub fn apply(&mut self, changes: &[Change<'_>]) -> Result<CommitStats, NftError> {
        let started = Instant::now();
        let mut b = self.sock.batch();
        for change in changes {
            match *change {
                Change::DropTable(name) => {
                    let t = TableMsg::new(name, None);
                    b.push(
                        &t,
                        MsgType::Add,
                        format!("making sure table inet {name} exists"),
                    );
                    b.push(&t, MsgType::Del, format!("deleting table inet {name}"));
                }
                Change::CreateTable(rs) => create_table(&mut b, rs),
                Change::Egress(rs) => {
                    let chain = egress::CHAIN;
                    b.push(
                        &RuleMsg::flush(&rs.table, chain),
                        MsgType::Del,
                        format!("emptying chain {chain}"),
                    );
                    add_rules(&mut b, rs, chain, |_| 0);
                }
                Change::Forget { table, set, keys } => {
                    for (msg, n) in SetMsg::del_elements(table, set, keys, true) {
                        b.push(
                            &msg,
                            MsgType::Del,
                            format!("forgetting {n} sticky entr(y/ies) of {set}"),
                        );
                    }
                }
                Change::Elements { table, deltas } => {
                    for d in deltas {
                        for (msg, n) in SetMsg::del_elements(table, &d.set, &d.remove, false) {
                            b.push(
                                &msg,
                                MsgType::Del,
                                format!(
                                    "removing {n} element(s) from {} (first: {})",
                                    d.set,
                                    describe(&d.remove[0])
                                ),
                            );
                        }
                    }
                    for d in deltas {
                        let mut at = 0;
                        for (msg, n) in
                            SetMsg::add_elements(table, &d.set, d.add.iter().map(|(k, e)| (k, e)))
                        {
                            let first = &d.add[at];
                            b.push(
                                &msg,
                                MsgType::Add,
                                format!(
                                    "adding {n} element(s) to {} (first: {} \"{}\")",
                                    d.set,
                                    describe(&first.0),
                                    first.1.comment
                                ),
                            );
                            at += n;
                        }
                    }
                }
            }
        }
        let messages = b.messages();
        let finished = b.finish();
        let bytes = finished.bytes().len();
        let encode = started.elapsed();
        let sent = Instant::now();
        let generation = self.sock.commit(finished)?;
        Ok(CommitStats {
            messages,
            bytes,
            encode,
            kernel: sent.elapsed(),
            generation,
        })
    }

    /// The ruleset's generation: the kernel moves it with every commit to any table of this
    /// network namespace.
    pub fn generation(&mut self) -> Result<u32, NftError> {
        self.sock.generation()
    }

    /// The comment of table `inet name`, or `None` if there is no such table.
    pub fn table_comment(&mut self, name: &str) -> Result<Option<String>, NftError> {
        dump::table_comment(&mut self.sock, name)
    }

    /// Reads table `inet NAME` back, to adopt it: its elements, if its layout is `layout`'s.
    ///
    /// A dump is not a snapshot: if the ruleset changed while it was read (the generation
    /// moved), it is read again, a few times at most.
    pub fn read_installed(&mut self, layout: &Ruleset) -> Result<Installed, NftError> {
        const ATTEMPTS: usize = 5;
        let mut generation = self.sock.generation()?;
        for _ in 1..ATTEMPTS {
            let found = self.read_installed_once(layout)?;
            let after = self.sock.generation()?;
            if after == generation {
                return Ok(found);
            }
            generation = after;
        }
        self.read_installed_once(layout)
    }

    fn read_installed_once(&mut self, layout: &Ruleset) -> Result<Installed, NftError> {
        let comment = match dump::table_comment(&mut self.sock, &layout.table)? {
            None => return Ok(Installed::Absent),
            Some(c) => c,
        };
        if !comment.starts_with(COMMENT_PREFIX) {
            return Ok(Installed::NotNatlb { comment });
        }
        if comment != layout.comment {
            return Ok(Installed::Foreign {
                reason: format!(
                    "its comment is {comment:?}, not {:?} (another natlb version or not natlb's)",
                    layout.comment
                ),
            });
        }
        let rules = dump::rules(&mut self.sock, &layout.table)?;
        if let Some(reason) = self.layout_differs(layout, &rules)? {
            return Ok(Installed::Foreign { reason });
        }
        let mut rs = layout.clone();
        // The kernel fills the dynamic maps; they are not part of what natlb installs.
        for spec in layout.sets.iter().filter(|s| s.dynamic.is_none()) {
            match self.read_set(&layout.table, spec)? {
                Ok(elements) => {
                    rs.elements.insert(spec.name.clone(), elements);
                }
                Err(reason) => return Ok(Installed::Foreign { reason }),
            }
        }
        let installed_egress: Vec<&String> = rules
            .iter()
            .filter(|((chain, _), _)| chain == egress::CHAIN)
            .map(|(_, text)| text)
            .collect();
        let desired_egress: Vec<String> = egress_rules(layout)
            .map(|r| {
                let exprs: Vec<Expr> = r.exprs.iter().map(as_the_kernel_lists).collect();
                RuleMsg::new(&layout.table, egress::CHAIN, &exprs, &r.comment, |_| 0).text()
            })
            .collect();
        if installed_egress.len() == desired_egress.len()
            && installed_egress
                .iter()
                .zip(&desired_egress)
                .all(|(a, b)| *a == b)
        {
            Ok(Installed::Ours(rs))
        } else {
            Ok(Installed::OursOtherEgress(rs))
        }
    }

    /// Whether the installed sets and rules differ from the layout's (someone changed them by
    /// hand): the reason, or `None` if they match.
    fn layout_differs(
        &mut self,
        layout: &Ruleset,
        installed: &[dump::RuleDump],
    ) -> Result<Option<String>, NftError> {
        let sets = dump::set_shapes(&mut self.sock, &layout.table)?;
        for spec in &layout.sets {
            let want = (
                spec.is_map(),
                concat_len(&spec.key),
                if spec.is_map() {
                    concat_len(&spec.data)
                } else {
                    0
                },
            );
            match sets.get(&spec.name) {
                None => return Ok(Some(format!("it has no set {}", spec.name))),
                Some(&(flags, key, data)) => {
                    let got = (
                        flags & libc::NFT_SET_MAP as u32 != 0,
                        key,
                        if want.0 { data } else { 0 },
                    );
                    if got != want {
                        return Ok(Some(format!("set {} is declared differently", spec.name)));
                    }
                }
            }
        }
        if sets.len() != layout.sets.len() {
            return Ok(Some("it has sets natlb does not declare".into()));
        }
        // The egress chain holds the config's egress rules after its fixed ones; adoption rewrites
        // it whole, so its installed rules need not match.
        let rules: Vec<dump::RuleShape> = installed
            .iter()
            .map(|(shape, _)| shape)
            .filter(|(chain, _)| chain != egress::CHAIN)
            .cloned()
            .collect();
        let want: Vec<dump::RuleShape> = layout
            .chains
            .iter()
            .filter(|c| c.name != egress::CHAIN)
            .flat_map(|c| {
                c.rules.iter().map(|r| {
                    (
                        c.name.clone(),
                        r.exprs
                            .iter()
                            .map(|e| e.kernel_name().to_string())
                            .collect(),
                    )
                })
            })
            .collect();
        if rules != want {
            return Ok(Some(format!(
                "its rules differ from natlb's ({} installed, {} expected)",
                rules.len(),
                want.len()
            )));
        }
        Ok(None)
    }

    /// The entries of a dynamic map the kernel filled (sticky entries): key and data each.
    pub fn dynamic_entries(
        &mut self,
        table: &str,
        spec: &SetSpec,
    ) -> Result<Vec<KernelEntry>, NftError> {
        Ok(match self.read_set(table, spec)? {
            Ok(elements) => elements.into_iter().map(|(k, e)| (k, e.data)).collect(),
            // Missing or unreadable: nothing natlb could delete by key.
            Err(_) => vec![],
        })
    }

    /// The elements of a counting map (the slot maps) with their counters: key, data,
    /// (packets, bytes). A missing set has none; an element natlb cannot decode is skipped.
    pub fn counted_entries(
        &mut self,
        table: &str,
        spec: &SetSpec,
    ) -> Result<Vec<CountedEntry>, NftError> {
        let Some(raw) = dump::set_elements(&mut self.sock, table, &spec.name)? else {
            return Ok(vec![]);
        };
        Ok(raw
            .into_iter()
            .filter_map(|e| {
                let key = decode_values(&spec.key, &e.key)?;
                let data = decode_values(&spec.data, &e.data)?;
                Some((key, data, e.counter.unwrap_or_default()))
            })
            .collect())
    }

    fn read_set(
        &mut self,
        table: &str,
        spec: &SetSpec,
    ) -> Result<Result<BTreeMap<Vec<Value>, Entry>, String>, NftError> {
        let Some(raw) = dump::set_elements(&mut self.sock, table, &spec.name)? else {
            return Ok(Err(format!("it has no set {}", spec.name)));
        };
        let mut out = BTreeMap::new();
        for e in raw {
            let key = decode_values(&spec.key, &e.key);
            let data = if spec.is_map() {
                decode_values(&spec.data, &e.data)
            } else {
                Some(vec![])
            };
            match (key, data) {
                (Some(key), Some(data)) => {
                    out.insert(
                        key,
                        Entry {
                            data,
                            comment: e.comment.unwrap_or_default(),
                        },
                    );
                }
                _ => {
                    return Ok(Err(format!(
                        "set {} holds an element natlb did not write",
                        spec.name
                    )));
                }
            }
        }
        Ok(Ok(out))
    }
}

fn create_table(b: &mut batch::Batch, rs: &Ruleset) {
    let table = &rs.table;
    b.push(
        &TableMsg::new(table, Some(&rs.comment)),
        MsgType::Add,
        format!("creating table inet {table}"),
    );
    // Set ids name the sets to the rules of this same batch; 0 means "none", so start at 1.
    let set_id = |name: &str| -> u32 {
        rs.sets
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as u32 + 1)
            .unwrap_or(0)
    };
    for (i, s) in rs.sets.iter().enumerate() {
        b.push(
            &SetMsg::declare(table, s, i as u32 + 1),
            MsgType::Add,
            format!("declaring set {}", s.name),
        );
    }
    for c in &rs.chains {
        b.push(
            &ChainMsg::new(table, c),
            MsgType::Add,
            format!("creating chain {}", c.name),
        );
        add_rules(b, rs, &c.name, set_id);
    }
    for (set, elements) in &rs.elements {
        let entries: Vec<_> = elements.iter().collect();
        let mut at = 0;
        for (msg, n) in SetMsg::add_elements(table, set, entries.iter().copied()) {
            let (k, e) = entries[at];
            b.push(
                &msg,
                MsgType::Add,
                format!(
                    "adding {n} element(s) to {set} (first: {} \"{}\")",
                    describe(k),
                    e.comment
                ),
            );
            at += n;
        }
    }
}

/// `NF_NAT_RANGE_MAP_IPS` / `NF_NAT_RANGE_PROTO_SPECIFIED`.
const RANGE_MAP_IPS: u32 = 1;
const RANGE_PROTO_SPECIFIED: u32 = 2;

/// A NAT expression as the kernel lists it back: it fills in what the rule left out (the upper
/// end of a range is its lower end; the flags say an address and ports were given).
fn as_the_kernel_lists(e: &Expr) -> Expr {
    match e.clone() {
        Expr::Nat {
            kind,
            family,
            addr_reg,
            addr_max_reg,
            proto_reg,
            proto_max_reg,
            flags,
        } => Expr::Nat {
            kind,
            family,
            addr_reg,
            addr_max_reg: addr_max_reg.or(Some(addr_reg)),
            proto_reg,
            proto_max_reg: proto_max_reg.or(proto_reg),
            flags: flags
                | RANGE_MAP_IPS
                | if proto_reg.is_some() {
                    RANGE_PROTO_SPECIFIED
                } else {
                    0
                },
        },
        Expr::Masquerade {
            proto_min_reg,
            proto_max_reg,
            flags,
        } => Expr::Masquerade {
            proto_min_reg,
            proto_max_reg: proto_max_reg.or(proto_min_reg),
            flags,
        },
        other => other,
    }
}

/// The rules of the egress chain: its fixed ones, then the egress rules.
fn egress_rules(rs: &Ruleset) -> impl Iterator<Item = RuleSpec> + '_ {
    let fixed = rs
        .chains
        .iter()
        .filter(|c| c.name == egress::CHAIN)
        .flat_map(|c| c.rules.iter().cloned());
    fixed.chain(rs.egress.iter().map(|r| r.spec()))
}

/// The rules of `chain`: the layout's, and for the egress chain the egress rules after them.
fn add_rules(b: &mut batch::Batch, rs: &Ruleset, chain: &str, set_id: impl Fn(&str) -> u32) {
    let rules: Vec<RuleSpec> = if chain == egress::CHAIN {
        egress_rules(rs).collect()
    } else {
        rs.chains
            .iter()
            .filter(|c| c.name == chain)
            .flat_map(|c| c.rules.iter().cloned())
            .collect()
    };
    for (i, r) in rules.iter().enumerate() {
        b.push(
            &RuleMsg::new(&rs.table, chain, &r.exprs, &r.comment, &set_id),
            MsgType::Add,
            format!("adding rule {} of chain {chain}", i + 1),
        );
    }
}
