//! `natlb status` for people: one aligned table per gateway.

use natlb::control::api::{BackendStatus, Status};

/// `1234567` as `1.2M`: the table stays narrow; `--json` has the exact figures.
fn short(n: Option<u64>) -> String {
    let Some(n) = n else {
        return "?".into();
    };
    let f = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.1}G", f / 1e9),
    }
}

fn ago(time: &str, now: std::time::SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339(time) else {
        return time.to_string();
    };
    let secs = now.duration_since(t).unwrap_or_default().as_secs();
    match secs {
        0..120 => format!("{secs}s ago"),
        120..7200 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn probe(b: &BackendStatus, now: std::time::SystemTime) -> String {
    match &b.last_probe {
        None => "-".into(),
        Some(p) => format!(
            "{} {:.1}ms {}: {}",
            if p.ok { "ok" } else { "FAIL" },
            p.latency_ms,
            ago(&p.time, now),
            p.detail
        ),
    }
}

/// Pads every column of `rows` to its widest cell; the last column is left as it is.
fn aligned(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = width[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn table(s: &Status) -> String {
    let now = std::time::SystemTime::now();
    let mut out = format!("natlb {}, table inet {}", s.version, s.table);
    if let Some(c) = s.conntrack {
        let pct = if c.max == 0 {
            0.0
        } else {
            c.count as f64 * 100.0 / c.max as f64
        };
        out.push_str(&format!(
            ", conntrack {} of {} ({pct:.1} %)",
            c.count, c.max
        ));
    }
    out.push_str("\n\n");
    let mut rows = vec![
        [
            "SERVICE",
            "BACKEND",
            "HEALTH",
            "ADMIN",
            "WEIGHT",
            "EFFECTIVE",
            "SHARE",
            "CONNS",
            "NEW",
            "BYTES",
            "LAST PROBE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for svc in &s.services {
        rows.push(vec![
            svc.name.clone(),
            format!("{}/{} {}", svc.listen, svc.protocol, svc.scheduler),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            format!("{} slots", svc.slots),
            short(svc.connections),
            short(svc.packets),
            short(svc.bytes),
            String::new(),
        ]);
        for b in &svc.backends {
            let weight = match b.admin_weight {
                Some(w) => format!("{w} (cfg {})", b.weight),
                None => b.weight.to_string(),
            };
            rows.push(vec![
                String::new(),
                format!("{}{}", b.address, if b.backup { " backup" } else { "" }),
                b.health.clone(),
                b.admin.clone(),
                weight,
                b.effective_weight.to_string(),
                format!("{:.1} %", b.share * 100.0),
                short(b.connections),
                short(b.packets),
                short(b.bytes),
                probe(b, now),
            ]);
        }
    }
    out.push_str(&aligned(&rows));
    for e in &s.errors {
        out.push_str(&format!("\nnote: {e} (shown as ?)"));
    }
    if !s.errors.is_empty() {
        out.push('\n');
    }
    out
}
