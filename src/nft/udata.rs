//! Userdata blobs, in libnftnl's TLV format (`nftnl_udata`: u8 type, u8 length, value).
//!
//! The kernel stores them without looking; `nft list` reads them to print comments and to print a
//! set's `typeof` (and its integers in the right byte order). natlb writes exactly what nft 1.0.6
//! writes for the same declarations, so both list alike.

use crate::render::ruleset::{Family, Field};

// NFTNL_UDATA_SET_*
const SET_KEYBYTEORDER: u8 = 0;
const SET_DATABYTEORDER: u8 = 1;
const SET_KEY_TYPEOF: u8 = 3;
const SET_DATA_TYPEOF: u8 = 4;
const SET_DATA_INTERVAL: u8 = 6;
const SET_COMMENT: u8 = 7;
// NFTNL_UDATA_TABLE_COMMENT, NFTNL_UDATA_SET_ELEM_COMMENT and NFTNL_UDATA_RULE_COMMENT are all 0.
const COMMENT: u8 = 0;

// nft's `enum expr_types` and `enum byteorder`.
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;
const BYTEORDER_INVALID: u32 = 0;
const BYTEORDER_BIG_ENDIAN: u32 = 2;

/// The longest comment `nft` accepts (`NFTNL_UDATA_COMMENT_MAXLEN`).
pub const COMMENT_MAX: usize = 128;

#[derive(Default)]
struct Tlv(Vec<u8>);

impl Tlv {
    fn put(&mut self, ty: u8, value: &[u8]) -> &mut Self {
        let len = u8::try_from(value.len()).expect("udata attribute fits in 255 bytes");
        self.0.push(ty);
        self.0.push(len);
        self.0.extend_from_slice(value);
        self
    }

    fn put_u32(&mut self, ty: u8, v: u32) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    fn put_strz(&mut self, ty: u8, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v)
    }
}

/// A comment as table, rule or element userdata. Comments longer than nft accepts are cut.
pub fn comment(text: &str) -> Vec<u8> {
    let mut end = text.len().min(COMMENT_MAX - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut t = Tlv::default();
    t.put_strz(COMMENT, &text[..end]);
    t.0
}

/// Reads the comment back out of table, rule or element userdata.
pub fn parse_comment(udata: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 2 <= udata.len() {
        let (ty, len) = (udata[at], udata[at + 1] as usize);
        let value = udata.get(at + 2..at + 2 + len)?;
        if ty == COMMENT {
            let s = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(s.to_vec()).ok();
        }
        at += 2 + len;
    }
    None
}

/// The typeof description of one expression: its nft expression type and its own attributes.
fn field_expr(f: Field) -> Vec<u8> {
    // nft's proto_desc ids and header field ids (src/proto.c): ip = 12 (saddr 11, daddr 12),
    // ip6 = 13 (saddr 8, daddr 9), th = 11 (dport 2). meta l4proto = NFT_META_L4PROTO.
    let (ty, attrs) = match f {
        Field::Daddr(Family::V4) => (EXPR_PAYLOAD, vec![12, 12]),
        Field::Saddr(Family::V4) => (EXPR_PAYLOAD, vec![12, 11]),
        Field::Daddr(Family::V6) => (EXPR_PAYLOAD, vec![13, 9]),
        Field::Saddr(Family::V6) => (EXPR_PAYLOAD, vec![13, 8]),
        Field::Dport => (EXPR_PAYLOAD, vec![11, 2]),
        Field::L4proto => (EXPR_META, vec![libc::NFT_META_L4PROTO as u32]),
        // type, modulus, offset
        Field::Slot { modulus } => (EXPR_NUMGEN, vec![libc::NFT_NG_RANDOM as u32, modulus, 0]),
    };
    let mut data = Tlv::default();
    for (i, v) in attrs.into_iter().enumerate() {
        data.put_u32(i as u8, v);
    }
    let mut t = Tlv::default();
    t.put_u32(0, ty).put(1, &data.0);
    t.0
}

/// The typeof description of a key or value: the field itself, or a concatenation of them.
fn typeof_expr(fields: &[Field]) -> Vec<u8> {
    if let [single] = fields {
        return field_expr(*single);
    }
    let mut parts = Tlv::default();
    for (i, f) in fields.iter().enumerate() {
        parts.put(i as u8, &field_expr(*f));
    }
    let mut t = Tlv::default();
    t.put_u32(0, EXPR_CONCAT).put(1, &parts.0);
    t.0
}

/// How nft marks a key's byte order: concatenations carry none, addresses are big endian.
fn byteorder(fields: &[Field]) -> u32 {
    match fields {
        [Field::Daddr(_) | Field::Saddr(_) | Field::Dport] => BYTEORDER_BIG_ENDIAN,
        _ => BYTEORDER_INVALID,
    }
}

/// The userdata nft 1.0.6 writes for `set NAME { typeof KEY [: DATA]; comment "..." }`.
pub fn set_udata(key: &[Field], data: &[Field], set_comment: &str) -> Vec<u8> {
    let mut t = Tlv::default();
    t.put_u32(SET_KEYBYTEORDER, byteorder(key));
    if !data.is_empty() {
        t.put_u32(SET_DATABYTEORDER, byteorder(data));
    }
    t.put(SET_KEY_TYPEOF, &typeof_expr(key));
    if !data.is_empty() {
        t.put(SET_DATA_TYPEOF, &typeof_expr(data));
        t.put_u32(SET_DATA_INTERVAL, 0);
    }
    if !set_comment.is_empty() {
        t.put_strz(SET_COMMENT, set_comment);
    }
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // Golden bytes: the NFTA_SET_USERDATA that `nft --debug=mnl -f` (nft 1.0.6) sent for these
    // declarations on this project's reference machine.
    #[test]
    fn vip_set_matches_nft() {
        let key = [Field::Daddr(Family::V4), Field::L4proto, Field::Dport];
        assert_eq!(
            hex(&set_udata(&key, &[], "services")),
            "000400000000034400040d000000013c0014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b0000000104020000000709736572766963657300"
        );
        let key6 = [Field::Daddr(Family::V6), Field::L4proto, Field::Dport];
        assert_eq!(
            hex(&set_udata(&key6, &[], "")),
            "000400000000034400040d000000013c0014000407000000010c00040d000000010409000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000"
        );
    }

    #[test]
    fn slot_map_matches_nft() {
        let key = [
            Field::Daddr(Family::V6),
            Field::L4proto,
            Field::Dport,
            Field::Slot { modulus: 256 },
        ];
        let data = [Field::Daddr(Family::V6), Field::Dport];
        assert_eq!(
            hex(&set_udata(&key, &data, "")),
            "000400000000010400000000036000040d00000001580014000407000000010c00040d000000010409000000010e00040900000001060004100000000214000407000000010c00040b000000010402000000031a0004170000000112000401000000010400010000020400000000043400040d000000012c0014000407000000010c00040d0000000104090000000114000407000000010c00040b000000010402000000060400000000"
        );
    }

    #[test]
    fn snat_map_matches_nft() {
        let key = [Field::Daddr(Family::V4), Field::L4proto, Field::Dport];
        assert_eq!(
            hex(&set_udata(&key, &[Field::Saddr(Family::V4)], "")),
            "000400000000010402000000034400040d000000013c0014000407000000010c00040c00000001040c000000010e00040900000001060004100000000214000407000000010c00040b0000000104020000000414000407000000010c00040c00000001040b000000060400000000"
        );
    }

    #[test]
    fn comments_round_trip_and_are_bounded() {
        assert_eq!(
            parse_comment(&comment("web 10.0.0.1:80")).unwrap(),
            "web 10.0.0.1:80"
        );
        let long = "x".repeat(300);
        assert_eq!(
            parse_comment(&comment(&long)).unwrap().len(),
            COMMENT_MAX - 1
        );
    }
}
