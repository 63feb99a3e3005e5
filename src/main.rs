// SPDX-License-Identifier: Apache-2.0
//! The ztredir command: parse, dispatch, print, map errors to exit codes.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use std::io::Write;

use ztredir::cli::{
    Cli, Command, ConnsAction, ConnsArgs, FilterArgs, StatsAction, StatsArgs, TraceArgs,
    WorkloadCmd, ZtunnelCmd,
};
use ztredir::ctx::{Ctx, Outcome};
use ztredir::dataplane::pins::PinDir;
use ztredir::dataplane::state::Reader;
use ztredir::error::{exit_code, UsageError};
use ztredir::node::{inpod, workload, ztunnel};
use ztredir::report::observe;
use ztredir::report::output::{self, emit, Format};
use ztredir::report::status;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_error(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            if e.is::<ztredir::error::Silent>() {
                return ExitCode::FAILURE;
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

/// Help and version go to stdout with exit 0; every other parse error is a
/// usage error: one line, exit 2.
fn parse_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("Error: {}", ztredir::cli::usage_line(&e));
            ExitCode::from(ztredir::error::Exit::Usage as u8)
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
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer: clap_complete panics on a write error (a closed pipe).
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "ztredir", &mut buf);
            return std::io::stdout().write_all(&buf).map_err(Into::into);
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(dir)?;
            for (name, text) in ztredir::cli::man_pages() {
                std::fs::write(dir.join(name), text)?;
            }
            return Ok(());
        }
        _ => {}
    }
    // libbpf reports every probe that fails on its way to success (a
    // missing qdisc before creating one); only -v wants to see that.
    if !cli.verbose {
        libbpf_rs::set_print(None);
    }
    check_root()?;
    let mut ctx = Ctx::new(PinDir::new(&cli.pin_dir), cli.attach_mode.forced())?;
    ctx.force = cli.force;
    if fmt == Format::Prometheus && !matches!(cli.command, Command::Stats(_)) {
        return Err(ztredir::error::usage("-o prometheus is for stats only"));
    }
    dispatch(&ctx, fmt, cli.command)
}

/// Runs one command and prints what it returns.
fn dispatch(ctx: &Ctx, fmt: Format, command: Command) -> Result<()> {
    let result = |o: ztredir::ctx::Outcome| emit(fmt, &o, output::outcome);
    match command {
        Command::Ztunnel(ZtunnelCmd::Set(a)) => result(ztunnel::set(ctx, &a.spec())?),
        Command::Ztunnel(ZtunnelCmd::Clear) => result(ztunnel::clear(ctx)?),
        Command::Ztunnel(ZtunnelCmd::Show) => {
            emit(fmt, &status::collect(ctx)?.ztunnel, output::ztunnel)
        }
        Command::Attach(a) => {
            let ex = a.exclusions();
            match (&a.netns, &a.iface) {
                (Some(netns), iface) => {
                    if ex.is_some() {
                        return Err(ztredir::error::usage(
                            "exclusions are for node-level workloads, not in-pod (--netns) ones",
                        ));
                    }
                    let (namespace, name) =
                        inpod::parse_workload(a.workload.as_deref().unwrap_or_default())?;
                    let spec = inpod::PodSpec {
                        netns: netns.clone(),
                        iface: iface.clone(),
                        namespace,
                        name,
                        service_account: a.service_account.clone().unwrap_or_default(),
                        uid: a.uid.clone(),
                        ips: a.ips.clone(),
                        mode: None,
                    };
                    result(inpod::attach(ctx, &spec)?)
                }
                (None, Some(iface)) => result(workload::attach(ctx, iface, &a.ips, ex.as_ref())?),
                (None, None) => Err(ztredir::error::usage("attach needs IFACE or --netns")),
            }
        }
        Command::Detach(a) => match (a.iface, a.netns) {
            (_, Some(netns)) => result(inpod::detach(ctx, &netns)?),
            (Some(iface), None) if !a.all => result(workload::detach(ctx, &iface)?),
            _ => result(workload::detach_all(ctx)?),
        },
        Command::Zds(a) => inpod::serve_zds(ctx, &a.socket),
        Command::Workload(WorkloadCmd::Add { ip, iface }) => {
            result(workload::add_ip(ctx, ip, &iface)?)
        }
        Command::Workload(WorkloadCmd::Del { ip }) => result(workload::del_ip(ctx, ip)?),
        Command::Workload(WorkloadCmd::List) => emit(fmt, &status::collect(ctx)?.workloads, |w| {
            output::workloads(w)
        }),
        Command::Apply(a) => {
            let file = ztredir::plan::apply::read_file(&a.file)?;
            let opts = ztredir::plan::apply::Options {
                dry_run: a.dry_run,
                prune: a.prune,
            };
            let report = ztredir::plan::apply::apply(ctx, &file, opts)?;
            emit(fmt, &report, output::apply_report)
        }
        Command::Export => export(ctx, fmt),
        Command::Doctor => {
            let report = ztredir::report::doctor::run(ctx)?;
            emit(fmt, &report, output::doctor)?;
            if report.failed > 0 {
                return Err(ztredir::error::Silent.into());
            }
            Ok(())
        }
        Command::Uninstall => result(ztredir::plan::uninstall::uninstall(ctx)?),
        Command::Upgrade(a) => result(ztredir::plan::upgrade::upgrade(ctx, a.dry_run)?),
        Command::Status => emit(fmt, &status::collect(ctx)?, output::status),
        Command::Conns(a) => conns(ctx, fmt, a),
        Command::Stats(a) => stats(ctx, fmt, a),
        Command::Trace(a) => trace(ctx, fmt, a),
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before needing root")
        }
    }
}

fn export(ctx: &Ctx, fmt: Format) -> Result<()> {
    let file = ztredir::plan::apply::export(ctx)?;
    match fmt {
        Format::Table | Format::Yaml => {
            print!("{}", ztredir::node::nodefile::to_yaml(&file)?);
            Ok(())
        }
        _ => emit(fmt, &file, |_| String::new()),
    }
}

fn filter(f: FilterArgs) -> observe::ConnFilter {
    observe::ConnFilter {
        iface: f.iface,
        ip: f.ip,
        port: f.port,
        direction: f.direction.map(|d| format!("{d:?}").to_lowercase()),
        proto: f.proto.map(|p| format!("{p:?}").to_lowercase()),
    }
}

const NOTHING: &str = "nothing attached: ztredir has no state in this pin directory\n";

/// The pinned state for a read command (None: nothing pinned yet), with
/// its --iface filter checked against it.
fn open_for_read(ctx: &Ctx, iface: Option<&str>) -> Result<Option<Reader>> {
    let found = ctx.read()?;
    if let Some(name) = iface {
        observe::check_iface_filter(ctx, found.as_deref(), name)?;
    }
    Ok(found)
}

/// `conns flush` and `stats reset` write through a reader: like every
/// change, not into another version's maps.
fn refuse_skew(st: &Reader) -> Result<()> {
    match st.schema.current {
        true => Ok(()),
        false => Err(st.schema.skew_error()),
    }
}

fn conns(ctx: &Ctx, fmt: Format, a: ConnsArgs) -> Result<()> {
    let Some(st) = open_for_read(ctx, a.filter.iface.as_deref())? else {
        return emit(fmt, &Vec::<observe::ConnRow>::new(), |_| NOTHING.into());
    };
    if let Some(ConnsAction::Flush) = a.action {
        refuse_skew(&st)?;
        let n = observe::flush_conns(&st)?;
        return emit(
            fmt,
            &Outcome::changed(format!("flushed {n} connections")),
            output::outcome,
        );
    }
    let rows = observe::conns(&st, &filter(a.filter))?;
    let off = observe::conn_table(&st)?.is_none();
    emit(fmt, &rows, |rows| output::conns(rows, off))
}

fn stats(ctx: &Ctx, fmt: Format, a: StatsArgs) -> Result<()> {
    let Some(st) = open_for_read(ctx, a.iface.as_deref())? else {
        return emit(fmt, &Vec::<observe::StatRow>::new(), |_| {
            if fmt == Format::Prometheus {
                observe::prometheus(&[], None)
            } else {
                NOTHING.into()
            }
        });
    };
    if let Some(StatsAction::Reset) = a.action {
        refuse_skew(&st)?;
        let n = observe::reset_stats(&st)?;
        return emit(
            fmt,
            &Outcome::changed(format!("reset {n} counters")),
            output::outcome,
        );
    }
    let rows = observe::stats(&st, a.iface.as_deref())?;
    if fmt == Format::Prometheus {
        let conns = observe::conn_table(&st)?.map(|t| libbpf_rs::MapCore::keys(&t).count());
        return emit(fmt, &rows, |rows| observe::prometheus(rows, conns));
    }
    emit(fmt, &rows, |rows| output::stats(rows))
}

fn trace(ctx: &Ctx, fmt: Format, a: TraceArgs) -> Result<()> {
    let Some(reader) = open_for_read(ctx, a.filter.iface.as_deref())? else {
        return emit(fmt, &Vec::<observe::TraceRow>::new(), |_| NOTHING.into());
    };
    // The trace runs without holding the read lock: changes go on.
    let st = reader.into_state();
    let mut out = std::io::stdout().lock();
    if fmt == Format::Table {
        writeln!(out, "{}", output::TRACE_HEADER)?;
    }
    let limits = observe::TraceLimits {
        count: a.count,
        duration: a.duration,
    };
    observe::trace(ctx, &st, &filter(a.filter), limits, |row| {
        match fmt {
            Format::Json => writeln!(out, "{}", serde_json::to_string(row)?)?,
            Format::Yaml => write!(out, "---\n{}", serde_norway::to_string(row)?)?,
            _ => writeln!(out, "{}", output::trace_line(row))?,
        }
        out.flush()?;
        Ok(())
    })?;
    Ok(())
}
