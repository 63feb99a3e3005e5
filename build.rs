// SPDX-License-Identifier: Apache-2.0
//! Compiles bpf/ztredir.bpf.c into a libbpf skeleton in OUT_DIR.

use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/ztredir.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("target arch is set by cargo");
    // Debian keeps asm/types.h under the multiarch directory, which clang
    // does not search when targeting bpf.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    let obj = out.join("ztredir.bpf.o");
    SkeletonBuilder::new()
        .source(SRC)
        .obj(&obj)
        .clang_args(["-Wall", "-Werror", "-Ibpf", multiarch.as_str()])
        .build_and_generate(out.join("ztredir.skel.rs"))
        .expect("compile the BPF programs (is clang installed?)");
    // Which programs this binary carries, for the schema record: two builds
    // of one version with other programs are still a skew to upgrade.
    let bytes = std::fs::read(&obj).expect("read the compiled BPF object");
    println!("cargo:rustc-env=ZTREDIR_BPF_HASH={:016x}", fnv1a(&bytes));
    println!("cargo:rerun-if-changed=bpf");
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}
