//! Reads natlb's table back from the kernel: its comment and the elements of its sets.

use std::ffi::CString;
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl_sys as sys;

use super::error::NftError;
use super::socket::{Reply, Socket, nft_msg_type};
use super::udata;

const NFPROTO_INET: u16 = libc::NFPROTO_INET as u16;

/// One element as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawElement {
    pub key: Vec<u8>,
    pub data: Vec<u8>,
    pub comment: Option<String>,
    /// The element's counter (packets, bytes), when its set counts.
    pub counter: Option<(u64, u64)>,
}

/// Builds a request with libnftnl into an aligned scratch buffer and returns its bytes.
fn build_request(
    ty: i32,
    flags: u32,
    seq: u32,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> Vec<u8> {
    let mut scratch = vec![0u32; 1024];
    // SAFETY: 4 KiB is ample for a GET request naming a table and a set.
    let nlh = unsafe {
        sys::nftnl_nlmsg_build_hdr(
            scratch.as_mut_ptr().cast::<c_char>(),
            nft_msg_type(ty),
            NFPROTO_INET,
            (libc::NLM_F_REQUEST as u32 | flags) as u16,
            seq,
        )
    };
    payload(nlh);
    let len = scratch[0] as usize;
    // SAFETY: the message just written is `len` bytes at the start of scratch.
    unsafe { std::slice::from_raw_parts(scratch.as_ptr().cast::<u8>(), len) }.to_vec()
}

fn is_enoent(e: &NftError) -> bool {
    matches!(e, NftError::Rejected(errs) if errs.iter().all(|e| e.errno == libc::ENOENT))
}

/// The comment of table `inet NAME`: `Ok(None)` if there is no such table, `Some("")` if it
/// has no comment.
pub fn table_comment(sock: &mut Socket, name: &str) -> Result<Option<String>, NftError> {
    let cname = CString::new(name).expect("validated table name");
    let mut comment = None;
    let result = sock.request(
        &format!("reading table inet {name}"),
        |seq| {
            build_request(libc::NFT_MSG_GETTABLE, libc::NLM_F_ACK as u32, seq, |nlh| {
                // SAFETY: a fresh table object, used to build the payload, then freed.
                unsafe {
                    let t = sys::nftnl_table_alloc();
                    sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, cname.as_ptr());
                    sys::nftnl_table_nlmsg_build_payload(nlh, t);
                    sys::nftnl_table_free(t);
                }
            })
        },
        |reply| {
            if reply.ty == nft_msg_type(libc::NFT_MSG_NEWTABLE) {
                comment = Some(parse_table_comment(reply)?.unwrap_or_default());
            }
            Ok(())
        },
    );
    match result {
        Ok(()) => Ok(comment),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_table_comment(reply: &Reply<'_>) -> Result<Option<String>, NftError> {
    // SAFETY: reply.raw is one complete, aligned netlink message; the table object is freed
    // before return and the userdata is copied out first.
    unsafe {
        let t = NonNull::new(sys::nftnl_table_alloc()).expect("out of memory");
        let rc = sys::nftnl_table_nlmsg_parse(reply.raw.as_ptr().cast(), t.as_ptr());
        let mut out = None;
        if rc >= 0 {
            let mut len = 0u32;
            let p =
                sys::nftnl_table_get_data(t.as_ptr(), sys::NFTNL_TABLE_USERDATA as u16, &mut len);
            if !p.is_null() {
                let ud = std::slice::from_raw_parts(p.cast::<u8>(), len as usize);
                out = udata::parse_comment(ud);
            }
        }
        sys::nftnl_table_free(t.as_ptr());
        if rc < 0 {
            return Err(NftError::Protocol("cannot parse the table".into()));
        }
        Ok(out)
    }
}

/// Every element of set `set` of table `inet table`; `Ok(None)` if there is no such set.
pub fn set_elements(
    sock: &mut Socket,
    table: &str,
    set: &str,
) -> Result<Option<Vec<RawElement>>, NftError> {
    let (ctable, cset) = (
        CString::new(table).expect("validated table name"),
        CString::new(set).expect("layout set name"),
    );
    let mut out = Vec::new();
    let result = sock.request(
        &format!("reading the elements of set {set} of table inet {table}"),
        |seq| {
            build_request(
                libc::NFT_MSG_GETSETELEM,
                libc::NLM_F_DUMP as u32,
                seq,
                |nlh| {
                    // SAFETY: a fresh set object used to build the request, then freed.
                    unsafe {
                        let s = sys::nftnl_set_alloc();
                        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, ctable.as_ptr());
                        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, cset.as_ptr());
                        sys::nftnl_set_elems_nlmsg_build_payload(nlh, s);
                        sys::nftnl_set_free(s);
                    }
                },
            )
        },
        |reply| {
            if reply.ty == nft_msg_type(libc::NFT_MSG_NEWSETELEM) {
                parse_elements(reply, &mut out)?;
            }
            Ok(())
        },
    );
    match result {
        Ok(()) => Ok(Some(out)),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Copies one attribute of an element, or nothing if it is absent.
///
/// # Safety
/// `e` must be a live element.
unsafe fn elem_bytes(e: *mut sys::nftnl_set_elem, attr: u32) -> Vec<u8> {
    let mut len = 0u32;
    // SAFETY: e is live (caller); the returned pointer is valid for `len` bytes while e lives.
    unsafe {
        let p = sys::nftnl_set_elem_get(e, attr as u16, &mut len);
        if p.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(p.cast::<u8>(), len as usize).to_vec()
        }
    }
}

/// The values of an element's `counter` expression, if it has one.
///
/// # Safety
/// `e` must be a live element.
unsafe fn elem_counter(e: *mut sys::nftnl_set_elem) -> Option<(u64, u64)> {
    unsafe extern "C" fn visit(expr: *mut sys::nftnl_expr, data: *mut libc::c_void) -> i32 {
        // SAFETY: libnftnl passes a live expression of the element, and `data` is the
        // `Option<(u64, u64)>` below, alive for the whole walk.
        unsafe {
            let name = std::ffi::CStr::from_ptr(sys::nftnl_expr_get_str(
                expr,
                sys::NFTNL_EXPR_NAME as u16,
            ));
            if name.to_bytes() == b"counter" {
                let out = &mut *data.cast::<Option<(u64, u64)>>();
                *out = Some((
                    sys::nftnl_expr_get_u64(expr, sys::NFTNL_EXPR_CTR_PACKETS as u16),
                    sys::nftnl_expr_get_u64(expr, sys::NFTNL_EXPR_CTR_BYTES as u16),
                ));
            }
        }
        0
    }
    let mut out: Option<(u64, u64)> = None;
    // SAFETY: e is live (caller); the callback only writes `out`, which outlives the call.
    unsafe {
        sys::nftnl_set_elem_expr_foreach(e, Some(visit), (&raw mut out).cast());
    }
    out
}

fn parse_elements(reply: &Reply<'_>, out: &mut Vec<RawElement>) -> Result<(), NftError> {
    // SAFETY: reply.raw is one complete, aligned message; the set and its iterator are freed
    // before return, and element bytes are copied out while they live.
    unsafe {
        let s = NonNull::new(sys::nftnl_set_alloc()).expect("out of memory");
        let rc = sys::nftnl_set_elems_nlmsg_parse(reply.raw.as_ptr().cast(), s.as_ptr());
        if rc < 0 {
            sys::nftnl_set_free(s.as_ptr());
            return Err(NftError::Protocol("cannot parse set elements".into()));
        }
        let it = sys::nftnl_set_elems_iter_create(s.as_ptr());
        let mut e = sys::nftnl_set_elems_iter_next(it);
        while !e.is_null() {
            let ud = elem_bytes(e, sys::NFTNL_SET_ELEM_USERDATA);
            out.push(RawElement {
                key: elem_bytes(e, sys::NFTNL_SET_ELEM_KEY),
                data: elem_bytes(e, sys::NFTNL_SET_ELEM_DATA),
                comment: udata::parse_comment(&ud),
                counter: elem_counter(e),
            });
            e = sys::nftnl_set_elems_iter_next(it);
        }
        sys::nftnl_set_elems_iter_destroy(it);
        sys::nftnl_set_free(s.as_ptr());
    }
    Ok(())
}

/// The shape of one installed rule: its chain and its expressions' names, in order.
pub type RuleShape = (String, Vec<String>);

/// One installed rule: its shape, and its whole content as text ([`rule_text`]).
pub type RuleDump = (RuleShape, String);

/// Every expression of a rule with all its attributes, as libnftnl prints them (`[ payload
/// load 4b @ network header + 12 => reg 1 ]`...), and its comment: two rules with the same text
/// do the same. natlb compares the egress rules it finds with the ones it would write this way.
///
/// # Safety
/// `r` must be a live rule.
pub(super) unsafe fn rule_text(r: *const sys::nftnl_rule) -> String {
    let mut out = String::new();
    let mut buf = vec![0 as c_char; 4096];
    // SAFETY: r is live (caller); the iterator is destroyed before return; snprintf writes at
    // most buf.len() bytes, NUL-terminated.
    unsafe {
        let it = sys::nftnl_expr_iter_create(r);
        let mut e = sys::nftnl_expr_iter_next(it);
        while !e.is_null() {
            sys::nftnl_expr_snprintf(buf.as_mut_ptr(), buf.len(), e, 0, 0);
            out.push_str(&cstr(buf.as_ptr()));
            out.push('\n');
            e = sys::nftnl_expr_iter_next(it);
        }
        sys::nftnl_expr_iter_destroy(it);
        let mut len = 0u32;
        let ud = sys::nftnl_rule_get_data(r, sys::NFTNL_RULE_USERDATA as u16, &mut len);
        if !ud.is_null() {
            let bytes = std::slice::from_raw_parts(ud.cast::<u8>(), len as usize);
            out.push_str(&format!("comment {:?}", udata::parse_comment(bytes)));
        }
    }
    out
}

/// Every rule of table `inet table`, in chain order as the kernel lists them.
pub fn rules(sock: &mut Socket, table: &str) -> Result<Vec<RuleDump>, NftError> {
    let ctable = CString::new(table).expect("validated table name");
    let mut out = Vec::new();
    sock.request(
        &format!("reading the rules of table inet {table}"),
        |seq| {
            build_request(libc::NFT_MSG_GETRULE, libc::NLM_F_DUMP as u32, seq, |nlh| {
                // SAFETY: a fresh rule object used to build the request, then freed.
                unsafe {
                    let r = sys::nftnl_rule_alloc();
                    sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, ctable.as_ptr());
                    sys::nftnl_rule_nlmsg_build_payload(nlh, r);
                    sys::nftnl_rule_free(r);
                }
            })
        },
        |reply| {
            if reply.ty == nft_msg_type(libc::NFT_MSG_NEWRULE) {
                out.push(parse_rule(reply)?);
            }
            Ok(())
        },
    )?;
    Ok(out)
}

fn cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libnftnl returns NUL-terminated strings that live as long as their object, and
    // this copies it out at once.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

fn parse_rule(reply: &Reply<'_>) -> Result<RuleDump, NftError> {
    // SAFETY: reply.raw is one complete, aligned message; the rule and its iterator are freed
    // before return and every string is copied out while they live.
    unsafe {
        let r = NonNull::new(sys::nftnl_rule_alloc()).expect("out of memory");
        if sys::nftnl_rule_nlmsg_parse(reply.raw.as_ptr().cast(), r.as_ptr()) < 0 {
            sys::nftnl_rule_free(r.as_ptr());
            return Err(NftError::Protocol("cannot parse a rule".into()));
        }
        let chain = cstr(sys::nftnl_rule_get_str(
            r.as_ptr(),
            sys::NFTNL_RULE_CHAIN as u16,
        ));
        let mut exprs = Vec::new();
        let it = sys::nftnl_expr_iter_create(r.as_ptr());
        let mut e = sys::nftnl_expr_iter_next(it);
        while !e.is_null() {
            exprs.push(cstr(sys::nftnl_expr_get_str(
                e,
                sys::NFTNL_EXPR_NAME as u16,
            )));
            e = sys::nftnl_expr_iter_next(it);
        }
        sys::nftnl_expr_iter_destroy(it);
        let text = rule_text(r.as_ptr());
        sys::nftnl_rule_free(r.as_ptr());
        Ok(((chain, exprs), text))
    }
}

/// The declaration of one installed set: flags, key length and data length.
pub type SetShape = (u32, u32, u32);

/// Every set of table `inet table` with its declaration.
pub fn set_shapes(
    sock: &mut Socket,
    table: &str,
) -> Result<std::collections::BTreeMap<String, SetShape>, NftError> {
    let ctable = CString::new(table).expect("validated table name");
    let mut out = std::collections::BTreeMap::new();
    sock.request(
        &format!("reading the sets of table inet {table}"),
        |seq| {
            build_request(libc::NFT_MSG_GETSET, libc::NLM_F_DUMP as u32, seq, |nlh| {
                // SAFETY: a fresh set object used to build the request, then freed.
                unsafe {
                    let s = sys::nftnl_set_alloc();
                    sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, ctable.as_ptr());
                    sys::nftnl_set_nlmsg_build_payload(nlh, s);
                    sys::nftnl_set_free(s);
                }
            })
        },
        |reply| {
            if reply.ty == nft_msg_type(libc::NFT_MSG_NEWSET) {
                // SAFETY: one complete, aligned message; the set is freed before return.
                unsafe {
                    let s = NonNull::new(sys::nftnl_set_alloc()).expect("out of memory");
                    if sys::nftnl_set_nlmsg_parse(reply.raw.as_ptr().cast(), s.as_ptr()) < 0 {
                        sys::nftnl_set_free(s.as_ptr());
                        return Err(NftError::Protocol("cannot parse a set".into()));
                    }
                    let p = s.as_ptr();
                    let name = cstr(sys::nftnl_set_get_str(p, sys::NFTNL_SET_NAME as u16));
                    let shape = (
                        sys::nftnl_set_get_u32(p, sys::NFTNL_SET_FLAGS as u16),
                        sys::nftnl_set_get_u32(p, sys::NFTNL_SET_KEY_LEN as u16),
                        sys::nftnl_set_get_u32(p, sys::NFTNL_SET_DATA_LEN as u16),
                    );
                    sys::nftnl_set_free(p);
                    out.insert(name, shape);
                }
            }
            Ok(())
        },
    )?;
    Ok(out)
}
