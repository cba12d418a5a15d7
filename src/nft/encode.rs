//! Encodes ruleset objects as nf_tables netlink messages with libnftnl.
//!
//! This is the only place natlb builds kernel messages, and so the only place with `unsafe`
//! outside the socket: libnftnl objects are raw pointers, wrapped here in owners that free them.
//! Everything is built and consumed on one thread (libnftnl objects are not `Send`).

use std::ffi::{CString, c_void};
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::{MsgType, NlMsg};
use nftnl_sys as sys;

use super::udata;
use crate::render::ruleset::{
    ChainKind, ChainSpec, CmpOp, Entry, Expr, Family, Hook, NatKind, SetSpec, Value,
    concat_datatype, concat_len, encode_values,
};

const NFPROTO_INET: u16 = libc::NFPROTO_INET as u16;

/// `NFT_DYNSET_OP_DELETE` of `enum nft_dynset_ops`, which `libc` lacks.
const NFT_DYNSET_OP_DELETE: u32 = 2;

/// Room for one element list in a NEWSETELEM message: the list is one netlink attribute, and an
/// attribute's length is 16 bits.
const ELEMENT_LIST_BUDGET: usize = 60_000;

fn cstring(s: &str) -> CString {
    CString::new(s).expect("names and comments contain no NUL (validated)")
}

/// Writes the netlink header of an nf_tables message and returns it for the payload builder.
///
/// # Safety
/// `buf` must have room for `nftnl::nft_nlmsg_maxsize()` bytes (nftnl's batch guarantees it).
unsafe fn header(buf: *mut c_void, ty: u32, flags: u32, seq: u32) -> *mut libc::nlmsghdr {
    // SAFETY: the caller passes a batch buffer with room for the largest message.
    unsafe {
        sys::nftnl_nlmsg_build_hdr(
            buf.cast::<c_char>(),
            ty as u16,
            NFPROTO_INET,
            flags as u16,
            seq,
        )
    }
}

const CREATE: u32 = libc::NLM_F_CREATE as u32;
const EXCL: u32 = libc::NLM_F_EXCL as u32;
const APPEND: u32 = libc::NLM_F_APPEND as u32;

/// `NEWTABLE` / `DELTABLE` for natlb's table, with its comment.
pub struct TableMsg {
    table: NonNull<sys::nftnl_table>,
}

impl TableMsg {
    pub fn new(name: &str, comment: Option<&str>) -> TableMsg {
        let name = cstring(name);
        // SAFETY: alloc returns a fresh object or NULL (checked); the setters copy their input.
        unsafe {
            let table = NonNull::new(sys::nftnl_table_alloc()).expect("out of memory");
            sys::nftnl_table_set_str(table.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(
                table.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                u32::from(NFPROTO_INET),
            );
            if let Some(c) = comment {
                let ud = udata::comment(c);
                sys::nftnl_table_set_data(
                    table.as_ptr(),
                    sys::NFTNL_TABLE_USERDATA as u16,
                    ud.as_ptr().cast(),
                    ud.len() as u32,
                );
            }
            TableMsg { table }
        }
    }
}

// SAFETY: writes one message no larger than nft_nlmsg_maxsize into the batch buffer.
unsafe impl NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWTABLE as u32, CREATE),
            MsgType::Del => (libc::NFT_MSG_DELTABLE as u32, 0),
        };
        // SAFETY: buf has room (trait contract); self.table is a live object.
        unsafe {
            let nlh = header(buf, ty, flags, seq);
            sys::nftnl_table_nlmsg_build_payload(nlh, self.table.as_ptr());
        }
    }
}

impl Drop for TableMsg {
    fn drop(&mut self) {
        // SAFETY: we own the object and free it once.
        unsafe { sys::nftnl_table_free(self.table.as_ptr()) }
    }
}

/// `NEWCHAIN` of a base chain (nat or filter) or of a regular chain.
pub struct ChainMsg {
    chain: NonNull<sys::nftnl_chain>,
}

impl ChainMsg {
    pub fn new(table: &str, spec: &ChainSpec) -> ChainMsg {
        let (table, name) = (cstring(table), cstring(&spec.name));
        // SAFETY: fresh object, setters copy their input.
        unsafe {
            let c = NonNull::new(sys::nftnl_chain_alloc()).expect("out of memory");
            let p = c.as_ptr();
            sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
            sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_NAME as u16, name.as_ptr());
            sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_FAMILY as u16, u32::from(NFPROTO_INET));
            if let Some(base) = &spec.base {
                let hook = match base.hook {
                    Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
                    Hook::Output => libc::NF_INET_LOCAL_OUT,
                    Hook::Postrouting => libc::NF_INET_POST_ROUTING,
                } as u32;
                sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_HOOKNUM as u16, hook);
                sys::nftnl_chain_set_s32(p, sys::NFTNL_CHAIN_PRIO as u16, base.priority);
                let kind = match base.kind {
                    ChainKind::Nat => c"nat",
                    ChainKind::Filter => c"filter",
                };
                sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_TYPE as u16, kind.as_ptr());
                sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_POLICY as u16, libc::NF_ACCEPT as u32);
            }
            ChainMsg { chain: c }
        }
    }
}

// SAFETY: writes one bounded message into the batch buffer.
unsafe impl NlMsg for ChainMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _: MsgType) {
        // SAFETY: buf has room (trait contract); the chain is live.
        unsafe {
            let nlh = header(buf, libc::NFT_MSG_NEWCHAIN as u32, CREATE, seq);
            sys::nftnl_chain_nlmsg_build_payload(nlh, self.chain.as_ptr());
        }
    }
}

impl Drop for ChainMsg {
    fn drop(&mut self) {
        // SAFETY: owned, freed once.
        unsafe { sys::nftnl_chain_free(self.chain.as_ptr()) }
    }
}

/// A libnftnl set object: a set declaration (`NEWSET`) or a list of elements (`NEWSETELEM` /
/// `DELSETELEM`) of one set.
pub struct SetMsg {
    set: NonNull<sys::nftnl_set>,
    kind: SetMsgKind,
}

#[derive(Clone, Copy)]
enum SetMsgKind {
    Declare,
    AddElements,
    DelElements,
    /// `DESTROYSETELEM`: delete, and no error if the element is gone (an entry the kernel
    /// filled can time out between natlb reading it and the batch).
    DestroyElements,
}

/// `NFT_MSG_DESTROYSETELEM` (kernel 6.3), not in the libc crate yet.
const NFT_MSG_DESTROYSETELEM: u32 = 30;

fn new_set(table: &str, name: &str, id: u32) -> NonNull<sys::nftnl_set> {
    let (table, name) = (cstring(table), cstring(name));
    // SAFETY: fresh object, setters copy their input.
    unsafe {
        let s = NonNull::new(sys::nftnl_set_alloc()).expect("out of memory");
        let p = s.as_ptr();
        sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, name.as_ptr());
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, u32::from(NFPROTO_INET));
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, id);
        s
    }
}

impl SetMsg {
    /// The declaration of `spec`; `id` names it to rules of the same batch.
    pub fn declare(table: &str, spec: &SetSpec, id: u32) -> SetMsg {
        let s = new_set(table, &spec.name, id);
        let p = s.as_ptr();
        let ud = udata::set_udata(&spec.key, &spec.data, &spec.comment);
        // SAFETY: s is live; setters copy their input; the counter expression's ownership
        // passes to the set.
        unsafe {
            let mut flags = if spec.is_map() {
                libc::NFT_SET_MAP as u32
            } else {
                0
            };
            if let Some(size) = spec.dynamic {
                // `flags dynamic,timeout; size N`, as nft declares it.
                flags |= (libc::NFT_SET_EVAL | libc::NFT_SET_TIMEOUT) as u32;
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DESC_SIZE as u16, size);
            }
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, flags);
            sys::nftnl_set_set_u32(
                p,
                sys::NFTNL_SET_KEY_TYPE as u16,
                concat_datatype(&spec.key),
            );
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, concat_len(&spec.key));
            if spec.is_map() {
                sys::nftnl_set_set_u32(
                    p,
                    sys::NFTNL_SET_DATA_TYPE as u16,
                    concat_datatype(&spec.data),
                );
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_LEN as u16, concat_len(&spec.data));
            }
            sys::nftnl_set_set_data(
                p,
                sys::NFTNL_SET_USERDATA as u16,
                ud.as_ptr().cast(),
                ud.len() as u32,
            );
            if spec.counter {
                let counter = NonNull::new(sys::nftnl_expr_alloc(c"counter".as_ptr()))
                    .expect("out of memory");
                sys::nftnl_set_add_expr(p, counter.as_ptr());
            }
        }
        SetMsg {
            set: s,
            kind: SetMsgKind::Declare,
        }
    }

    /// Element lists to add `elements` to `set`, split so that each fits in one message.
    pub fn add_elements<'a>(
        table: &str,
        set: &str,
        elements: impl IntoIterator<Item = (&'a Vec<Value>, &'a Entry)>,
    ) -> Vec<(SetMsg, usize)> {
        Self::element_chunks(
            table,
            set,
            SetMsgKind::AddElements,
            elements.into_iter().map(|(k, e)| (k, Some(e))),
        )
    }

    /// Element lists to delete the elements with these keys from `set`: an error for a missing
    /// one, or, with `if_present` (`DESTROYSETELEM`), none.
    pub fn del_elements<'a>(
        table: &str,
        set: &str,
        keys: impl IntoIterator<Item = &'a Vec<Value>>,
        if_present: bool,
    ) -> Vec<(SetMsg, usize)> {
        let kind = if if_present {
            SetMsgKind::DestroyElements
        } else {
            SetMsgKind::DelElements
        };
        Self::element_chunks(table, set, kind, keys.into_iter().map(|k| (k, None)))
    }

    fn element_chunks<'a>(
        table: &str,
        set: &str,
        kind: SetMsgKind,
        elements: impl Iterator<Item = (&'a Vec<Value>, Option<&'a Entry>)>,
    ) -> Vec<(SetMsg, usize)> {
        let mut out = Vec::new();
        let mut current: Option<(SetMsg, usize, usize)> = None; // (msg, count, bytes)
        for (key, entry) in elements {
            let key = encode_values(key);
            let data = entry.map(|e| encode_values(&e.data)).unwrap_or_default();
            let ud = entry
                .map(|e| udata::comment(&e.comment))
                .unwrap_or_default();
            // Attribute headers and padding: element nest, key nest + value, data nest + value,
            // userdata.
            let size = 4 + 8 + key.len() + 8 + data.len() + 4 + ud.len().next_multiple_of(4);
            if current
                .as_ref()
                .is_some_and(|(_, _, bytes)| bytes + size > ELEMENT_LIST_BUDGET)
            {
                let (msg, n, _) = current.take().expect("checked");
                out.push((msg, n));
            }
            let (msg, n, bytes) = current.get_or_insert_with(|| {
                (
                    SetMsg {
                        set: new_set(table, set, 0),
                        kind,
                    },
                    0,
                    0,
                )
            });
            // SAFETY: fresh element, setters copy their input; the set takes ownership of it.
            unsafe {
                let e = NonNull::new(sys::nftnl_set_elem_alloc()).expect("out of memory");
                let ep = e.as_ptr();
                sys::nftnl_set_elem_set(
                    ep,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr().cast(),
                    key.len() as u32,
                );
                if !data.is_empty() {
                    sys::nftnl_set_elem_set(
                        ep,
                        sys::NFTNL_SET_ELEM_DATA as u16,
                        data.as_ptr().cast(),
                        data.len() as u32,
                    );
                }
                if !ud.is_empty() {
                    sys::nftnl_set_elem_set(
                        ep,
                        sys::NFTNL_SET_ELEM_USERDATA as u16,
                        ud.as_ptr().cast(),
                        ud.len() as u32,
                    );
                }
                sys::nftnl_set_elem_add(msg.set.as_ptr(), ep);
            }
            *n += 1;
            *bytes += size;
        }
        if let Some((msg, n, _)) = current {
            out.push((msg, n));
        }
        out
    }
}

// SAFETY: one message; element lists are kept under the 64 KiB attribute limit above.
unsafe impl NlMsg for SetMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _: MsgType) {
        // SAFETY: buf has room (trait contract); the set is live.
        unsafe {
            match self.kind {
                SetMsgKind::Declare => {
                    let nlh = header(buf, libc::NFT_MSG_NEWSET as u32, CREATE, seq);
                    sys::nftnl_set_nlmsg_build_payload(nlh, self.set.as_ptr());
                }
                SetMsgKind::AddElements => {
                    let nlh = header(buf, libc::NFT_MSG_NEWSETELEM as u32, CREATE | EXCL, seq);
                    sys::nftnl_set_elems_nlmsg_build_payload(nlh, self.set.as_ptr());
                }
                SetMsgKind::DelElements => {
                    let nlh = header(buf, libc::NFT_MSG_DELSETELEM as u32, 0, seq);
                    sys::nftnl_set_elems_nlmsg_build_payload(nlh, self.set.as_ptr());
                }
                SetMsgKind::DestroyElements => {
                    let nlh = header(buf, NFT_MSG_DESTROYSETELEM, 0, seq);
                    sys::nftnl_set_elems_nlmsg_build_payload(nlh, self.set.as_ptr());
                }
            }
        }
    }
}

impl Drop for SetMsg {
    fn drop(&mut self) {
        // SAFETY: owned, freed once (with its elements and expressions).
        unsafe { sys::nftnl_set_free(self.set.as_ptr()) }
    }
}

/// `NEWRULE` appending a rule to a chain; or, sent as `MsgType::Del` after [`RuleMsg::flush`],
/// `DELRULE` naming only the chain: the kernel deletes every rule of the chain.
pub struct RuleMsg {
    rule: NonNull<sys::nftnl_rule>,
}

impl RuleMsg {
    /// `set_ids` gives the batch id of every set a lookup names.
    pub fn new(
        table: &str,
        chain: &str,
        exprs: &[Expr],
        comment: &str,
        set_id: impl Fn(&str) -> u32,
    ) -> RuleMsg {
        let (table, chain) = (cstring(table), cstring(chain));
        // SAFETY: fresh rule, setters copy their input, the rule takes ownership of each
        // expression.
        unsafe {
            let r = NonNull::new(sys::nftnl_rule_alloc()).expect("out of memory");
            let p = r.as_ptr();
            sys::nftnl_rule_set_str(p, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
            sys::nftnl_rule_set_str(p, sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
            sys::nftnl_rule_set_u32(p, sys::NFTNL_RULE_FAMILY as u16, u32::from(NFPROTO_INET));
            if !comment.is_empty() {
                let ud = udata::comment(comment);
                sys::nftnl_rule_set_data(
                    p,
                    sys::NFTNL_RULE_USERDATA as u16,
                    ud.as_ptr().cast(),
                    ud.len() as u32,
                );
            }
            for e in exprs {
                sys::nftnl_rule_add_expr(p, build_expr(e, &set_id).as_ptr());
            }
            RuleMsg { rule: r }
        }
    }

    /// The rule's content as [`super::dump::rule_text`] prints an installed one.
    pub fn text(&self) -> String {
        // SAFETY: the rule is live while self is.
        unsafe { super::dump::rule_text(self.rule.as_ptr()) }
    }

    /// The message that empties `chain`, when sent as `MsgType::Del`.
    pub fn flush(table: &str, chain: &str) -> RuleMsg {
        RuleMsg::new(table, chain, &[], "", |_| 0)
    }
}

// SAFETY: one bounded message.
unsafe impl NlMsg for RuleMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWRULE as u32, CREATE | APPEND),
            MsgType::Del => (libc::NFT_MSG_DELRULE as u32, 0),
        };
        // SAFETY: buf has room (trait contract); the rule is live.
        unsafe {
            let nlh = header(buf, ty, flags, seq);
            sys::nftnl_rule_nlmsg_build_payload(nlh, self.rule.as_ptr());
        }
    }
}

impl Drop for RuleMsg {
    fn drop(&mut self) {
        // SAFETY: owned, freed once (with its expressions).
        unsafe { sys::nftnl_rule_free(self.rule.as_ptr()) }
    }
}

fn expr_alloc(name: &std::ffi::CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: libnftnl knows every name used below; NULL only on allocation failure.
    NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) }).expect("known expression")
}

/// Builds one libnftnl expression. The caller takes ownership.
/// `NFT_HASH_JENKINS` of `enum nft_hash_types` (not in the libc crate).
const NFT_HASH_JENKINS: u32 = 0;

fn build_expr(e: &Expr, set_id: &impl Fn(&str) -> u32) -> NonNull<sys::nftnl_expr> {
    use sys::{
        nftnl_expr_set as set_data, nftnl_expr_set_u8 as set_u8, nftnl_expr_set_u32 as set_u32,
    };
    // SAFETY: every setter takes a live expression of the named type and copies its input.
    unsafe {
        match e {
            Expr::Meta { key, dreg } => {
                let x = expr_alloc(c"meta");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_META_KEY as u16, *key);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_META_DREG as u16, *dreg);
                x
            }
            Expr::Cmp { sreg, op, data } => {
                let x = expr_alloc(c"cmp");
                let op = match op {
                    CmpOp::Eq => libc::NFT_CMP_EQ,
                    CmpOp::Neq => libc::NFT_CMP_NEQ,
                } as u32;
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_CMP_SREG as u16, *sreg);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_CMP_OP as u16, op);
                set_data(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_CMP_DATA as u16,
                    data.as_ptr().cast(),
                    data.len() as u32,
                );
                x
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let x = expr_alloc(c"payload");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_PAYLOAD_DREG as u16, *dreg);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_PAYLOAD_BASE as u16, *base);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, *offset);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_PAYLOAD_LEN as u16, *len);
                x
            }
            Expr::Ct { key, dir, dreg } => {
                let x = expr_alloc(c"ct");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_CT_KEY as u16, *key);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_CT_DREG as u16, *dreg);
                if let Some(d) = dir {
                    set_u8(x.as_ptr(), sys::NFTNL_EXPR_CT_DIR as u16, *d);
                }
                x
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                let x = expr_alloc(c"bitwise");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_BITWISE_SREG as u16, *sreg);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_BITWISE_DREG as u16, *dreg);
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_BITWISE_LEN as u16,
                    mask.len() as u32,
                );
                set_data(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_BITWISE_MASK as u16,
                    mask.as_ptr().cast(),
                    mask.len() as u32,
                );
                set_data(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_BITWISE_XOR as u16,
                    xor.as_ptr().cast(),
                    xor.len() as u32,
                );
                x
            }
            Expr::Numgen { dreg, modulus, inc } => {
                let x = expr_alloc(c"numgen");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_NG_DREG as u16, *dreg);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_NG_MODULUS as u16, *modulus);
                let ty = if *inc {
                    libc::NFT_NG_INCREMENTAL
                } else {
                    libc::NFT_NG_RANDOM
                };
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_NG_TYPE as u16, ty as u32);
                x
            }
            Expr::Jhash {
                sreg,
                len,
                dreg,
                modulus,
                seed,
            } => {
                let x = expr_alloc(c"hash");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_HASH_SREG as u16, *sreg);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_HASH_DREG as u16, *dreg);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_HASH_LEN as u16, *len);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_HASH_MODULUS as u16, *modulus);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_HASH_SEED as u16, *seed);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_HASH_OFFSET as u16, 0);
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_HASH_TYPE as u16,
                    NFT_HASH_JENKINS,
                );
                x
            }
            Expr::Goto(chain) => {
                let x = expr_alloc(c"immediate");
                let name = cstring(chain);
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_IMM_DREG as u16,
                    libc::NFT_REG_VERDICT as u32,
                );
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_IMM_VERDICT as u16,
                    libc::NFT_GOTO as u32,
                );
                sys::nftnl_expr_set_str(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_IMM_CHAIN as u16,
                    name.as_ptr(),
                );
                x
            }
            Expr::Dynset {
                key_reg,
                data_reg,
                set,
                timeout_ms,
            } => {
                let x = expr_alloc(c"dynset");
                let name = cstring(set);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_DYNSET_SREG_KEY as u16, *key_reg);
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_DYNSET_SREG_DATA as u16,
                    *data_reg,
                );
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_DYNSET_OP as u16,
                    if timeout_ms.is_some() {
                        libc::NFT_DYNSET_OP_UPDATE as u32
                    } else {
                        NFT_DYNSET_OP_DELETE
                    },
                );
                if let Some(ms) = timeout_ms {
                    sys::nftnl_expr_set_u64(x.as_ptr(), sys::NFTNL_EXPR_DYNSET_TIMEOUT as u16, *ms);
                }
                sys::nftnl_expr_set_str(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_DYNSET_SET_NAME as u16,
                    name.as_ptr(),
                );
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_DYNSET_SET_ID as u16,
                    set_id(set),
                );
                x
            }
            Expr::Lookup {
                sreg,
                set,
                dreg,
                invert,
            } => {
                let x = expr_alloc(c"lookup");
                if *invert {
                    set_u32(
                        x.as_ptr(),
                        sys::NFTNL_EXPR_LOOKUP_FLAGS as u16,
                        libc::NFT_LOOKUP_F_INV as u32,
                    );
                }
                let name = cstring(set);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_LOOKUP_SREG as u16, *sreg);
                if let Some(d) = dreg {
                    set_u32(x.as_ptr(), sys::NFTNL_EXPR_LOOKUP_DREG as u16, *d);
                }
                sys::nftnl_expr_set_str(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_LOOKUP_SET as u16,
                    name.as_ptr(),
                );
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_LOOKUP_SET_ID as u16,
                    set_id(set),
                );
                x
            }
            Expr::Nat {
                kind,
                family,
                addr_reg,
                addr_max_reg,
                proto_reg,
                proto_max_reg,
                flags,
            } => {
                let x = expr_alloc(c"nat");
                let ty = match kind {
                    NatKind::Snat => libc::NFT_NAT_SNAT,
                    NatKind::Dnat => libc::NFT_NAT_DNAT,
                } as u32;
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_NAT_TYPE as u16, ty);
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_NAT_FAMILY as u16,
                    u32::from(family.nfproto()),
                );
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_NAT_REG_ADDR_MIN as u16,
                    *addr_reg,
                );
                let optional = [
                    (sys::NFTNL_EXPR_NAT_REG_ADDR_MAX, *addr_max_reg),
                    (sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *proto_reg),
                    (sys::NFTNL_EXPR_NAT_REG_PROTO_MAX, *proto_max_reg),
                    (sys::NFTNL_EXPR_NAT_FLAGS, Some(*flags).filter(|&f| f != 0)),
                ];
                for (attr, value) in optional {
                    if let Some(v) = value {
                        set_u32(x.as_ptr(), attr as u16, v);
                    }
                }
                x
            }
            Expr::Masquerade {
                proto_min_reg,
                proto_max_reg,
                flags,
            } => {
                let x = expr_alloc(c"masq");
                let optional = [
                    (sys::NFTNL_EXPR_MASQ_REG_PROTO_MIN, *proto_min_reg),
                    (sys::NFTNL_EXPR_MASQ_REG_PROTO_MAX, *proto_max_reg),
                    (sys::NFTNL_EXPR_MASQ_FLAGS, Some(*flags).filter(|&f| f != 0)),
                ];
                for (attr, value) in optional {
                    if let Some(v) = value {
                        set_u32(x.as_ptr(), attr as u16, v);
                    }
                }
                x
            }
            Expr::Immediate { dreg, data } => {
                let x = expr_alloc(c"immediate");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_IMM_DREG as u16, *dreg);
                set_data(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_IMM_DATA as u16,
                    data.as_ptr().cast(),
                    data.len() as u32,
                );
                x
            }
            Expr::Fib {
                flags,
                result,
                dreg,
            } => {
                let x = expr_alloc(c"fib");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_FIB_FLAGS as u16, *flags);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_FIB_RESULT as u16, *result);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_FIB_DREG as u16, *dreg);
                x
            }
            Expr::MetaSet { key, sreg } => {
                let x = expr_alloc(c"meta");
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_META_KEY as u16, *key);
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_META_SREG as u16, *sreg);
                x
            }
            Expr::Reject { tcp_reset, family } => {
                let x = expr_alloc(c"reject");
                let (ty, code) = match (tcp_reset, family) {
                    (true, _) => (libc::NFT_REJECT_TCP_RST, 0),
                    // ICMP_PORT_UNREACH / ICMPV6_PORT_UNREACH
                    (false, Family::V4) => (libc::NFT_REJECT_ICMP_UNREACH, 3),
                    (false, Family::V6) => (libc::NFT_REJECT_ICMP_UNREACH, 4),
                };
                set_u32(x.as_ptr(), sys::NFTNL_EXPR_REJECT_TYPE as u16, ty as u32);
                set_u8(x.as_ptr(), sys::NFTNL_EXPR_REJECT_CODE as u16, code);
                x
            }
            Expr::Accept | Expr::Drop => {
                let x = expr_alloc(c"immediate");
                let verdict = match e {
                    Expr::Accept => libc::NF_ACCEPT,
                    _ => libc::NF_DROP,
                };
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_IMM_DREG as u16,
                    libc::NFT_REG_VERDICT as u32,
                );
                set_u32(
                    x.as_ptr(),
                    sys::NFTNL_EXPR_IMM_VERDICT as u16,
                    verdict as u32,
                );
                x
            }
        }
    }
}
