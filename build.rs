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
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args(["-Wall", "-Werror", "-Ibpf", multiarch.as_str()])
        .build_and_generate(out.join("ztredir.skel.rs"))
        .expect("compile the BPF programs (is clang installed?)");
    println!("cargo:rerun-if-changed=bpf");
}
