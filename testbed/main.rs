// SPDX-License-Identifier: Apache-2.0
//! `testbed up|down`: the tests' node topology for scripts (`scripts/demo.sh`, `bench/e2e.sh`,
//! `bench/control.sh`), so that they build it with the same code as the tests instead of
//! their own `ip` commands.
//!
//!   testbed up --prefix P [--pods zt,a,b,srv] [--veths N]
//!   testbed down --prefix P
//!
//! `up` prints what it made as shell assignments (`eval "$(testbed up ...)"`) and leaves it in
//! place; `down` removes it, skipping what is already gone. Processes are the caller's: it
//! starts them with `nsenter --net=/run/netns/P-<ns>` and stops them by PID before `down`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "mod.rs"]
mod testbed;

use testbed::{Options, Topo, PODS, POD_GW_V4};

#[derive(Parser)]
#[command(
    name = "testbed",
    about = "Make or remove the ztredir test node in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make namespaces P-node, P-remote and P-<pod>, their veths, addresses and routes, and a
    /// bpffs at /tmp/P/bpf; print them as shell assignments
    Up {
        /// Namespaces are P-<name>, the work directory /tmp/P (letters and digits)
        #[arg(long, value_parser = prefix)]
        prefix: String,
        /// Which pods (zt, a, b, srv); the node and the remote are always made
        #[arg(long, value_delimiter = ',', value_parser = ["zt", "a", "b", "srv"],
              default_value = "zt,a,b,srv")]
        pods: Vec<String>,
        /// Also make N unaddressed veth pairs w<i>/p<i> in the node
        #[arg(long, default_value_t = 0)]
        veths: usize,
    },
    /// Remove what `up --prefix P` made; what is already gone is skipped
    Down {
        #[arg(long, value_parser = prefix)]
        prefix: String,
    },
}

fn prefix(s: &str) -> Result<String, String> {
    testbed::check_prefix(s).map(|()| s.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("testbed: run as root (it creates namespaces and mounts a bpffs)");
        return ExitCode::from(2);
    }
    match cli.cmd {
        Cmd::Up {
            prefix,
            pods,
            veths,
        } => {
            let opts = Options {
                prefix: Some(prefix),
                // The names are checked by clap; map them to the plan's &'static str.
                pods: PODS
                    .iter()
                    .map(|p| p.name)
                    .filter(|n| pods.iter().any(|p| p == n))
                    .collect(),
                veths,
            };
            // A failed step panics naming it; the Topo's drop removes what was made while it
            // unwinds. One line, without the location: it is a report, not a bug.
            std::panic::set_hook(Box::new(|info| {
                let msg = info.payload().downcast_ref::<String>().map(String::as_str);
                let msg = msg.or_else(|| info.payload().downcast_ref::<&str>().copied());
                eprintln!("testbed: {}", msg.unwrap_or("failed"));
            }));
            match std::panic::catch_unwind(|| Topo::build(&opts)) {
                Ok(topo) => {
                    print!("{}", describe(&topo));
                    topo.keep();
                }
                Err(_) => return ExitCode::FAILURE,
            }
        }
        Cmd::Down { prefix } => testbed::remove(&prefix),
    }
    ExitCode::SUCCESS
}

/// What `up` made, as shell assignments with comments.
fn describe(topo: &Topo) -> String {
    let p = topo.prefix();
    let netns: Vec<String> = topo.suffixes().iter().map(|s| topo.ns(s)).collect();
    let mut out = format!(
        "# node {p}-node: up0 {}/24 {}/64 to {p}-remote ({}, {}), {POD_GW_V4} on every pod veth\n",
        testbed::HOST_V4,
        testbed::HOST_V6,
        testbed::REMOTE_V4,
        testbed::REMOTE_V6
    );
    for pod in topo.pods() {
        let v6 = pod.v6.map(|a| format!(" {a}/128")).unwrap_or_default();
        out += &format!(
            "# pod {p}-{}: eth0 {}/32{v6}, node veth {}\n",
            pod.name, pod.v4, pod.veth
        );
    }
    out += &format!("prefix={p}\n");
    out += &format!("netns='{}'\n", netns.join(" "));
    out += &format!("workdir={}\n", topo.work_dir().display());
    out += &format!("bpffs={}\n", topo.pin_dir().display());
    out
}
