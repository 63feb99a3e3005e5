// SPDX-License-Identifier: Apache-2.0
//! Security and robustness of the control plane: bad input is refused in
//! one line with exit 2 before anything changes, state nobody else can
//! tamper with, and no silent loss of capture.

use std::process::{Command, Output};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ztredir_plain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ztredir"))
        .args(args)
        .output()
        .expect("run ztredir")
}

/// Usage errors are one line, but asking for help or the version still
/// prints them in full, on stdout, with exit 0.
#[test]
fn help_and_version_are_not_errors() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["attach", "--help"],
        &["help", "ztunnel", "set"],
    ] {
        let out = ztredir_plain(args);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "ztredir {args:?}: {out:?}");
        assert!(
            stdout.contains("Usage: ztredir") && stdout.lines().count() > 5,
            "ztredir {args:?}: {stdout}"
        );
        assert!(out.stderr.is_empty(), "ztredir {args:?}: {out:?}");
    }
    let out = ztredir_plain(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("ztredir {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Every kind of parse error, without a node: one line naming the value.
#[test]
fn parse_errors_are_one_line() {
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("x", vec!["attach", "va", "--ip", "x"]),
        ("70000", vec!["conns", "--port", "70000"]),
        (
            "10.0.0.0/33",
            vec!["attach", "va", "--exclude-cidr", "10.0.0.0/33"],
        ),
        ("--file", vec!["apply", "-f", "a", "-f", "b"]),
        ("frobnicate", vec!["frobnicate"]),
        ("bogus", vec!["-o", "bogus", "status"]),
        ("--all", vec!["detach", "va", "--all"]),
        ("ztunnel", vec!["ztunnel"]),
        ("ztredir", vec![]),
        ("<IFACE>", vec!["attach"]),
        ("--ip", vec!["attach", "va", "--ip"]),
    ];
    for (value, args) in cases {
        let out = ztredir_plain(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "ztredir {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "ztredir {args:?}: {stderr:?}");
        assert!(
            stderr.starts_with("Error: ") && stderr.contains(value),
            "ztredir {args:?} does not name {value:?}: {stderr:?}"
        );
        assert!(out.stdout.is_empty(), "ztredir {args:?}: {out:?}");
    }
}
