//! The two encodings of natlb's table can never drift: the netlink encoder's table and the
//! rendered nft script, each loaded into a fresh namespace, list identically.

mod fixtures;
mod lab;

use natlb::nft::{Change, Installed, Nft};
use natlb::render::{render, script::to_script};

#[test]
fn netlink_and_script_list_the_same() {
    let model = fixtures::sample_model("natlb");
    let rs = render(&model, |_, _| true);
    let a = lab::Netns::new("ea");
    let b = lab::Netns::new("eb");

    lab::in_netns(a.name(), || {
        let mut nft = Nft::open().unwrap();
        nft.apply(&[Change::DropTable(&rs.table), Change::CreateTable(&rs)])
            .unwrap_or_else(|e| panic!("{e}"));
        // Reading it back gives what was installed.
        match nft.read_installed(&rs).unwrap() {
            Installed::Ours(installed) => assert_eq!(installed, rs),
            other => panic!("not adopted: {other:?}"),
        }
    });
    let script = to_script(&rs);
    let dir = lab::TempDir::new("equiv");
    let path = dir.write("natlb.nft", &script);
    lab::exec_in_ok(b.name(), &["nft", "-f", path.to_str().unwrap()]);

    let list_a = lab::exec_in_ok(a.name(), &["nft", "list", "table", "inet", "natlb"]);
    let list_b = lab::exec_in_ok(b.name(), &["nft", "list", "table", "inet", "natlb"]);
    if list_a != list_b {
        let d = dir.write("a.txt", &list_a);
        let e = dir.write("b.txt", &list_b);
        let diff = lab::run(&["diff", "-u", d.to_str().unwrap(), e.to_str().unwrap()]);
        panic!(
            "netlink vs script differ:\n{}",
            String::from_utf8_lossy(&diff.stdout)
        );
    }
    assert!(
        list_a.contains("comment \"web 192.0.2.11:8080\""),
        "{list_a}"
    );
    // The whole ruleset must list cleanly too (nft's decoder is stricter than the kernel).
    lab::exec_in_ok(a.name(), &["nft", "list", "ruleset"]);
}
