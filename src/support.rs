//! What this version of natlb accepts in a config but does not act on yet.
//!
//! The config schema is the full contract of spec.md; the features behind some of its keys
//! arrive in later versions. Until then natlb says so, by name, wherever a config is read
//! (`check`, `render`, `run`), instead of silently doing something else.

use crate::model::Model;

/// One warning per config element that natlb does not act on yet, saying what it does instead.
pub fn not_yet_supported(model: &Model) -> Vec<String> {
    let mut out = Vec::new();
    if !model.egress.is_empty() {
        out.push("[[egress]] is not applied yet: no egress SNAT rules are installed".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_not_done_yet() {
        let m = crate::config::parse(
            "t.toml",
            "[[service]]\nname = \"a\"\nlisten = \"203.0.113.1:80\"\nscheduler = \"least-conn\"\n\
             persistence = \"5m\"\n[[service.backend]]\naddress = \"192.0.2.1\"\n\
             [[service]]\nname = \"b\"\nlisten = \"203.0.113.2:80\"\n[service.health]\ntype = \"none\"\n\
             [[service.backend]]\naddress = \"192.0.2.1\"\n",
        )
        .unwrap();
        // Every service feature is supported (persistence too), and the kernel's knobs; the
        // egress section is not yet.
        assert!(not_yet_supported(&m).is_empty());
    }
}
