//! A batch the kernel rejects changes nothing, and natlb's error names the failing change and
//! the kernel's errno.

mod fixtures;
mod lab;

use std::collections::BTreeMap;

use natlb::nft::{Change, Installed, Nft, NftError, SetDelta};
use natlb::render::ruleset::{Entry, Ruleset, Value};
use natlb::render::{layout, render};

fn elements_of(rs: &Ruleset, set: &str) -> BTreeMap<Vec<Value>, Entry> {
    rs.elements[set].clone()
}

#[test]
fn a_rejected_batch_changes_nothing_and_names_the_culprit() {
    let model = fixtures::sample_model("natlb");
    let rs = render(&model, |_, _| true);
    let ns = lab::Netns::new("at");
    lab::in_netns(ns.name(), || {
        let mut nft = Nft::open().unwrap();
        nft.apply(&[Change::DropTable(&rs.table), Change::CreateTable(&rs)])
            .unwrap();

        // One good change (remove a slot) and one bad one (add a key that exists already).
        let slots = layout::slots_map_name(natlb::render::ruleset::Family::V4);
        let (other_key, _) = elements_of(&rs, &slots).into_iter().nth(1).unwrap();
        let deltas = vec![
            SetDelta {
                set: slots.clone(),
                remove: vec![other_key],
                add: vec![],
            },
            SetDelta {
                set: "snat_masq4".into(),
                remove: vec![],
                add: vec![(
                    vec![
                        Value::Addr("203.0.113.10".parse().unwrap()),
                        Value::Proto(natlb::model::Protocol::Tcp),
                        Value::Port(80),
                    ],
                    Entry {
                        data: vec![],
                        comment: "duplicate".into(),
                    },
                )],
            },
        ];
        let err = nft
            .apply(&[Change::Elements {
                table: &rs.table,
                deltas: &deltas,
            }])
            .expect_err("the duplicate must be refused");
        let NftError::Rejected(errors) = &err else {
            panic!("{err}")
        };
        assert_eq!(errors.len(), 1, "{err}");
        assert_eq!(errors[0].errno, libc::EEXIST, "{err}");
        assert!(errors[0].purpose.contains("snat_masq4"), "{err}");
        assert!(err.to_string().contains("nothing was changed"), "{err}");

        // The good half of the batch did not happen either.
        match nft.read_installed(&rs).unwrap() {
            Installed::Ours(now) => assert_eq!(now, rs),
            other => panic!("{other:?}"),
        }

        // A batch naming a set that does not exist fails the same way, with ENOENT.
        let bogus = vec![SetDelta {
            set: "no_such_set".into(),
            remove: vec![vec![Value::Int(1)]],
            add: vec![],
        }];
        let err = nft
            .apply(&[Change::Elements {
                table: &rs.table,
                deltas: &bogus,
            }])
            .unwrap_err();
        assert!(err.to_string().contains("no_such_set"), "{err}");
        assert!(
            matches!(&err, NftError::Rejected(e) if e[0].errno == libc::ENOENT),
            "{err}"
        );
    });
}
