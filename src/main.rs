// SPDX-License-Identifier: Apache-2.0
//! The ztredir command: parse, dispatch, print, map errors to exit codes.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use ztredir::cli::{Cli, Command, WorkloadCmd, ZtunnelCmd};
use ztredir::ctx::Ctx;
use ztredir::error::{exit_code, UsageError};
use ztredir::output::{self, emit, Format};
use ztredir::pins::PinDir;
use ztredir::{status, workload, ztunnel};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let code = exit_code(&e);
            match e.chain().find_map(|c| c.downcast_ref::<UsageError>()) {
                Some(u) => eprintln!("Error: {u}"),
                None => eprintln!("Error: {e:#}"),
            }
            ExitCode::from(code as u8)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn check_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("ztredir needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)");
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let fmt = if cli.json { Format::Json } else { cli.output };
    // libbpf reports every probe that fails on its way to success (a
    // missing qdisc before creating one); only -v wants to see that.
    if !cli.verbose {
        libbpf_rs::set_print(None);
    }
    check_root()?;
    let ctx = Ctx::new(PinDir::new(&cli.pin_dir), cli.attach_mode.forced())?;
    let result = |o: ztredir::ctx::Outcome| emit(fmt, &o, output::outcome);
    match cli.command {
        Command::Ztunnel(ZtunnelCmd::Set(a)) => {
            let spec = ztunnel::Spec {
                iface: a.iface,
                netns: a.netns,
                pod_iface: a.pod_iface,
                host_ips: a.host_ips,
                capture_dns: a.capture_dns,
                ports: ztunnel::Ports {
                    outbound: a.outbound_port,
                    inbound: a.inbound_plaintext_port,
                    hbone: a.inbound_port,
                    dns: a.dns_port,
                },
            };
            result(ztunnel::set(&ctx, &spec)?)
        }
        Command::Ztunnel(ZtunnelCmd::Clear) => result(ztunnel::clear(&ctx)?),
        Command::Ztunnel(ZtunnelCmd::Show) => {
            let s = status::collect(&ctx)?;
            emit(fmt, &s.ztunnel, output::ztunnel)
        }
        Command::Attach(a) => result(workload::attach(&ctx, &a.iface, &a.ips)?),
        Command::Detach(a) => match a.iface {
            Some(iface) if !a.all => result(workload::detach(&ctx, &iface)?),
            _ => result(workload::detach_all(&ctx)?),
        },
        Command::Workload(WorkloadCmd::Add { ip, iface }) => {
            result(workload::add_ip(&ctx, ip, &iface)?)
        }
        Command::Workload(WorkloadCmd::Del { ip }) => result(workload::del_ip(&ctx, ip)?),
        Command::Workload(WorkloadCmd::List) => {
            let s = status::collect(&ctx)?;
            emit(fmt, &s.workloads, |w| output::workloads(w))
        }
        Command::Status => emit(fmt, &status::collect(&ctx)?, output::status),
    }
}
