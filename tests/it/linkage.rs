// SPDX-License-Identifier: Apache-2.0
//! The binary drops into any distribution: libbpf, libelf and zlib are linked in, so only
//! glibc is loaded at run time; `cargo build-static` links glibc in too, and that binary runs
//! in an empty root directory, as in a `FROM scratch` image.

use std::path::Path;
use std::process::Command;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The libraries glibc itself consists of (and the kernel's vDSO): what may stay dynamic.
const GLIBC: [&str; 6] = [
    "linux-vdso.so",
    "libc.so",
    "libm.so",
    "libgcc_s.so",
    "/lib64/ld-linux-x86-64.so",
    "ld-linux",
];

#[test]
fn only_glibc_is_linked_dynamically() {
    let bin = env!("CARGO_BIN_EXE_ztredir");
    let out = Command::new("ldd").arg(bin).output().expect("run ldd");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "ldd {bin}: {}", text(&out.stderr));
    for lib in ["libelf", "libz.", "libbpf", "libzstd"] {
        assert!(
            !shown.contains(lib),
            "{bin} loads {lib} at run time:\n{shown}"
        );
    }
    for line in shown.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        assert!(
            GLIBC.iter().any(|g| name.starts_with(g)),
            "{bin} loads {name}, which is not part of glibc:\n{shown}"
        );
    }
}

/// Whether the ELF file has a program interpreter (PT_INTERP): every dynamically linked
/// executable has one, a static or static-pie one has none.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

#[test]
fn static_build_runs_in_an_empty_root() {
    // Tests do not build: scripts/test.sh runs `cargo build-static` and passes the result.
    let Some(bin) = std::env::var_os("ZTREDIR_STATIC") else {
        // In CI the check must run, never be skipped.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but ZTREDIR_STATIC is not: run the suite with scripts/test.sh"
        );
        eprintln!("ZTREDIR_STATIC unset (scripts/test.sh sets it): static build not checked");
        return;
    };
    let bin = Path::new(&bin);
    let elf = std::fs::read(bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    assert!(
        !has_interpreter(&elf),
        "{} is dynamically linked",
        bin.display()
    );
    // An empty root with only the binary in it, like a FROM scratch image.
    let root = std::env::temp_dir().join(format!("ztredir-scratch-{}", std::process::id()));
    std::fs::create_dir(&root).expect("create the empty root");
    std::fs::copy(bin, root.join("ztredir")).expect("copy the binary");
    let out = Command::new("chroot")
        .arg(&root)
        .args(["/ztredir", "--version"])
        .output();
    std::fs::remove_dir_all(&root).ok();
    let out = out.expect("run chroot");
    assert!(
        out.status.success(),
        "ztredir --version in an empty root: {}",
        text(&out.stderr)
    );
    let want = format!("ztredir {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(text(&out.stdout).trim(), want);
}
