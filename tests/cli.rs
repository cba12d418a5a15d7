//! The command line as an operator uses it: `natlb check` and `natlb render`.

mod lab;

use std::path::Path;
use std::process::{Command, Stdio};

const NATLB: &str = env!("CARGO_BIN_EXE_natlb");

fn natlb(args: &[&str]) -> std::process::Output {
    Command::new(NATLB).args(args).output().unwrap()
}

/// `natlb render` of the demo config is exactly the checked-in golden script. After an
/// intended change of the layout or the rendering, regenerate it with
/// `NATLB_BLESS=1 cargo test --test cli` and review the diff.
#[test]
fn render_matches_golden() {
    let out = natlb(&["render", "-c", "examples/demo.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    let golden = Path::new("tests/golden/demo.nft");
    if std::env::var_os("NATLB_BLESS").is_some() {
        std::fs::write(golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(golden).unwrap();
    if got != want {
        let diff: Vec<_> = got
            .lines()
            .zip(want.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .collect();
        panic!(
            "render differs from {} ({} vs {} lines); first differences (line, got, golden): {diff:#?}",
            golden.display(),
            got.lines().count(),
            want.lines().count()
        );
    }
}

/// nft itself accepts what `natlb render` prints (`nft -c -f -`, in a namespace of our own).
#[test]
fn nft_accepts_the_rendered_script() {
    let out = natlb(&["render", "-c", "examples/demo.toml"]);
    assert!(out.status.success());
    let ns = lab::Netns::new("rc");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let res = child.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "nft -c refused the render:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn check_accepts_the_demo_config() {
    let out = natlb(&["check", "-c", "examples/demo.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (3 service(s)"));
}

#[test]
fn check_reports_every_error_with_file_line_col() {
    let dir = lab::TempDir::new("cli");
    let path = dir.write(
        "bad.toml",
        r#"[daemon]
tabel = "x"

[[service]]
name = "web"
listen = "203.0.113.10:80"
colour = "blue"

[[service.backend]]
address = "[2001:db8::1]:80"
"#,
    );
    let p = path.to_str().unwrap();
    let out = natlb(&["check", "-c", p]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{p}:2:1: ")), "{err}");
    assert!(err.contains(&format!("{p}:7:1: ")), "{err}");
    assert!(err.contains("tabel") && err.contains("colour"), "{err}");
    // The semantic error comes with the shape errors only once those are fixed.
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("tabel = \"x\"\n", "")
        .replace("colour = \"blue\"\n", "");
    std::fs::write(&path, fixed).unwrap();
    let out = natlb(&["check", "-c", p]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{p}:8:11: ")), "{err}");
    assert!(err.contains("IPv6") && err.contains("IPv4"), "{err}");
}

#[test]
fn check_names_a_missing_file() {
    let out = natlb(&["check", "-c", "/nonexistent/natlb.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/natlb.toml"));
}

/// Completions and man pages come from the clap definitions: every subcommand is in them.
#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let subcommands = [
        "run", "check", "render", "status", "drain", "enable", "weight", "reload",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let out = natlb(&["completions", shell]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for s in subcommands {
            assert!(text.contains(s), "{shell} completion lacks {s}");
        }
        assert!(text.contains("socket"), "{shell} completion lacks --socket");
    }
    let out = natlb(&["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH natlb 1"),
        "{page}"
    );
    for s in subcommands {
        assert!(
            page.contains(&format!("natlb\\-{s}(1)")),
            "man page lacks {s}:\n{page}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = natlb(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    let drain = std::fs::read_to_string(dir.path().join("natlb-drain.1")).unwrap();
    assert!(
        drain.contains("\\-\\-wait") && drain.contains("\\-\\-timeout"),
        "{drain}"
    );
    // A runtime command without a daemon says where it looked.
    let out = natlb(&["status", "--socket", "/nonexistent/control.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no control socket at /nonexistent/control.sock")
    );
}
