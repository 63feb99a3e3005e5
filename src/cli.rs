// SPDX-License-Identifier: Apache-2.0
//! The command line, as clap definitions. Kept apart from main so that man
//! pages and completions are generated from the same source.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::dataplane::attach::AttachMode;
use crate::node::ztunnel::Ports;
use crate::report::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "ztredir",
    version,
    about = "Redirect a node's workload traffic into its transparent proxy (ztunnel) with tc-BPF",
    after_help = "Exit status: 0 done, 1 failed at runtime, 2 bad usage or input (nothing changed)."
)]
pub struct Cli {
    /// Directory in bpffs where maps, programs and links are pinned
    #[arg(
        long,
        global = true,
        env = "ZTREDIR_PIN_DIR",
        default_value = "/sys/fs/bpf/ztredir"
    )]
    pub pin_dir: PathBuf,

    /// Output format of listings and results
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Shorthand for -o json
    #[arg(short = 'j', long = "json", global = true)]
    pub json: bool,

    /// How to attach programs: TCX links when the kernel has them (auto), or force one
    #[arg(long, global = true, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,

    /// Print more about what is being done
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Attach even to interfaces where another ztredir instance (another
    /// pin directory) has its programs; both then capture
    #[arg(long, global = true)]
    pub force: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configure, clear or show the node proxy (ztunnel)
    #[command(subcommand)]
    Ztunnel(ZtunnelCmd),
    /// Capture a workload's traffic: attach to its host-side veth
    Attach(AttachArgs),
    /// Stop capturing on a workload's host-side veth
    Detach(DetachArgs),
    /// Add, remove or list workload addresses
    #[command(subcommand)]
    Workload(WorkloadCmd),
    /// Converge the node to a node file (YAML): ztunnel, workloads (node-level or in-pod),
    /// exclusions
    Apply(ApplyArgs),
    /// Print the node's ztredir state as a node file that `apply` accepts
    Export,
    /// Check the kernel and the node for what redirection needs; exit 1 if a check fails
    Doctor,
    /// Detach everything (in-pod workloads' netns settings put back), clear ztunnel, and remove
    /// the pin directory (programs, maps, links)
    Uninstall,
    /// Move the pinned state onto this binary's programs and maps in place
    /// (after installing a new ztredir); nothing is detached
    Upgrade(UpgradeArgs),
    /// Show the ztunnel, attached interfaces, workloads, counters and warnings
    #[command(visible_alias = "show")]
    Status,
    /// List the connection table, newest first, or flush it
    Conns(ConnsArgs),
    /// Show packet counters by interface, program and reason, or reset them
    Stats(StatsArgs),
    /// Stream the programs' decisions live (until Ctrl-C, --count or --duration)
    Trace(TraceArgs),
    /// Serve ZDS, the unix socket over which ztunnel (shared mode) is handed each in-pod
    /// workload's netns; runs until SIGTERM or SIGINT
    Zds(ZdsArgs),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (section 8) into DIR
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// Print what would be reused, migrated and replaced; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// The kernel's rule for interface names, so that a name it would refuse
/// (with ERANGE, at the first netlink call) is a usage error.
fn iface_name(s: &str) -> Result<String, String> {
    crate::node::nodefile::check_ifname(s)?;
    Ok(s.to_string())
}

/// The longest `trace --duration`: a trace meant to run for longer runs
/// without one, until Ctrl-C.
pub const MAX_TRACE_SECONDS: f64 = 7.0 * 86400.0;

fn trace_duration(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_TRACE_SECONDS) {
        return Err(format!(
            "a number of seconds above 0 and at most {MAX_TRACE_SECONDS} is needed"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn workload_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.parse().map_err(|e| format!("{e}"))?;
    crate::dataplane::state::workload_ip(ip)
}

/// Man pages for ztredir and every subcommand, as (file name, roff text).
pub fn man_pages() -> Vec<(String, String)> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    fn walk(cmd: clap::Command, prefix: &str, out: &mut Vec<(String, String)>) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        let cmd = cmd.name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section("8")
            .render(&mut buf)
            .expect("render man page");
        out.push((
            format!("{name}.8"),
            String::from_utf8_lossy(&buf).into_owned(),
        ));
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            walk(sub.clone(), &name, out);
        }
    }
    walk(Cli::command(), "", &mut out);
    out
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this interface
    #[arg(long, value_name = "IFACE", value_parser = iface_name)]
    pub iface: Option<String>,
    /// Only connections or packets with this address at either end
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,
    /// Only this port at either end
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only this direction
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
    /// Only this protocol
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Outbound,
    Inbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct ConnsArgs {
    #[command(subcommand)]
    pub action: Option<ConnsAction>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConnsAction {
    /// Remove every entry from the connection table
    Flush,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(subcommand)]
    pub action: Option<StatsAction>,
    /// Only this interface
    #[arg(long, value_name = "IFACE", value_parser = iface_name)]
    pub iface: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StatsAction {
    /// Set every counter back to zero
    Reset,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this many events
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds (at most a week)
    #[arg(long, value_name = "SECONDS", value_parser = trace_duration, allow_negative_numbers = true)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum ZtunnelCmd {
    /// Point capture at ztunnel: attach its programs, policy routing and sysctls
    Set(ZtunnelSetArgs),
    /// Undo everything `ztunnel set` did; captured traffic is then dropped
    Clear,
    /// Show the ztunnel configuration
    #[command(visible_alias = "get")]
    Show,
}

#[derive(Debug, Args)]
pub struct ZtunnelSetArgs {
    /// ztunnel runs in shared (in-pod) mode: it listens inside each workload's netns, which
    /// `attach --netns` redirects to and `ztredir zds` hands it; no ztunnel veth or netns to name
    #[arg(long, conflicts_with_all = ["iface", "netns", "pod_iface"])]
    pub in_pod: bool,
    /// ztunnel's host-side veth (in the node netns)
    #[arg(long = "iface", value_name = "HOST_VETH", value_parser = iface_name, required_unless_present = "in_pod")]
    pub iface: Option<String>,
    /// ztunnel's network namespace: a name under /run/netns, or a path
    #[arg(long, value_name = "NETNS", required_unless_present = "in_pod")]
    pub netns: Option<String>,
    /// ztunnel's interface inside its netns (default: the veth's peer)
    #[arg(long, value_name = "IFACE", value_parser = iface_name)]
    pub pod_iface: Option<String>,
    /// A node host IP whose traffic to and from workloads is not captured (kubelet probes)
    #[arg(long = "host-ip", value_name = "IP")]
    pub host_ips: Vec<IpAddr>,
    /// Capture workloads' DNS (UDP and TCP port 53) to the DNS port
    #[arg(long)]
    pub capture_dns: bool,
    /// ztunnel's outbound listener port
    #[arg(long, default_value_t = Ports::DEFAULT.outbound, value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,
    /// ztunnel's inbound HBONE listener port; connections to this port go to it
    #[arg(long, default_value_t = Ports::DEFAULT.hbone, value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,
    /// ztunnel's inbound plaintext listener port
    #[arg(long, default_value_t = Ports::DEFAULT.inbound, value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_plaintext_port: u16,
    /// ztunnel's DNS proxy port
    #[arg(long, default_value_t = Ports::DEFAULT.dns, value_parser = clap::value_parser!(u16).range(1..))]
    pub dns_port: u16,
    /// Entries in the connection table (the oldest go first when it is full)
    #[arg(long, value_name = "N", default_value_t = Ports::CONNTRACK_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub conntrack_size: u32,
    /// Keep no connection table (saves one hash update per packet)
    #[arg(long, conflicts_with = "conntrack_size")]
    pub no_conntrack: bool,
}

impl ZtunnelSetArgs {
    /// The ztunnel these flags describe.
    pub fn spec(self) -> crate::node::ztunnel::Spec {
        crate::node::ztunnel::Spec {
            in_pod: self.in_pod,
            iface: self.iface.unwrap_or_default(),
            netns: self.netns.unwrap_or_default(),
            pod_iface: self.pod_iface,
            host_ips: self.host_ips,
            capture_dns: self.capture_dns,
            ports: Ports {
                outbound: self.outbound_port,
                inbound: self.inbound_plaintext_port,
                hbone: self.inbound_port,
                dns: self.dns_port,
            },
            conntrack: (!self.no_conntrack).then_some(self.conntrack_size),
            mode: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The workload's host-side veth; with --netns, its interface inside NETNS (default: the
    /// one holding the default route)
    #[arg(value_parser = iface_name, required_unless_present = "netns")]
    pub iface: Option<String>,
    /// In-pod: the workload's network namespace (a name under /run/netns, or a path); the
    /// programs go inside it and the proxy listens there
    #[arg(long, value_name = "NETNS", requires_all = ["workload", "service_account"])]
    pub netns: Option<String>,
    /// In-pod: the workload's Kubernetes identity, as the proxy is told it over ZDS
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "netns")]
    pub workload: Option<String>,
    /// In-pod: the workload's service account
    #[arg(long, value_name = "SA", requires = "netns")]
    pub service_account: Option<String>,
    /// In-pod: the workload's uid for ZDS (default: NAMESPACE/NAME)
    #[arg(long, value_name = "UID", requires = "netns")]
    pub uid: Option<String>,
    /// A workload address (repeatable); default: host routes through IFACE
    #[arg(long = "ip", value_name = "IP", value_parser = workload_ip)]
    pub ips: Vec<IpAddr>,
    /// Leave connections to this peer port uncaptured (repeatable)
    #[arg(long = "exclude-outbound-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub exclude_outbound_ports: Vec<u16>,
    /// Leave connections to this workload port uncaptured (repeatable)
    #[arg(long = "exclude-inbound-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub exclude_inbound_ports: Vec<u16>,
    /// Leave connections with peers in this CIDR uncaptured, both ways (repeatable)
    #[arg(long = "exclude-cidr", value_name = "CIDR")]
    pub exclude_cidrs: Vec<crate::node::exclude::Cidr>,
    /// Let the workload send from addresses that are not its own (by default such packets are dropped)
    #[arg(long)]
    pub allow_any_source: bool,
    /// Remove the interface's exclusions (exclusion flags replace them; without any they are kept)
    #[arg(long, conflicts_with_all = ["exclude_outbound_ports", "exclude_inbound_ports", "exclude_cidrs", "allow_any_source"])]
    pub no_exclusions: bool,
}

impl AttachArgs {
    /// The exclusions to set, or None to keep the interface's.
    pub fn exclusions(&self) -> Option<crate::node::exclude::Exclusions> {
        use crate::node::exclude::{Exclusions, Port};
        let ex = Exclusions {
            outbound_ports: self
                .exclude_outbound_ports
                .iter()
                .map(|p| Port(*p))
                .collect(),
            inbound_ports: self
                .exclude_inbound_ports
                .iter()
                .map(|p| Port(*p))
                .collect(),
            outbound_cidrs: self.exclude_cidrs.iter().copied().collect(),
            any_source: self.allow_any_source,
        };
        (self.no_exclusions || !ex.is_empty()).then_some(ex)
    }
}

#[derive(Debug, Args)]
pub struct ZdsArgs {
    /// The socket ztunnel connects to
    #[arg(
        long,
        value_name = "PATH",
        env = "ZTREDIR_ZDS_SOCKET",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub socket: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The node file; - reads standard input
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,
    /// Print the changes that would be made, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove what ztredir manages but the file does not name
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct DetachArgs {
    /// The workload's host-side veth
    #[arg(value_parser = iface_name)]
    pub iface: Option<String>,
    /// In-pod: the workload's network namespace
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<String>,
    /// Detach every workload interface
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum WorkloadCmd {
    /// Register an address as belonging to an attached workload interface
    Add {
        #[arg(value_parser = workload_ip)]
        ip: IpAddr,
        #[arg(long, value_name = "IFACE", value_parser = iface_name)]
        iface: String,
    },
    /// Forget a workload address
    #[command(visible_alias = "delete")]
    Del { ip: IpAddr },
    /// List workload addresses
    #[command(visible_alias = "ls")]
    List,
}

/// clap's usage errors as one line naming the bad value: scripts and
/// people read the first line of stderr, and clap's own layout spreads an
/// error over a usage block and tips.
pub fn usage_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind as C, ContextValue as V, ErrorKind as K};
    let text = |k: C| match e.get(k) {
        Some(V::String(s)) => Some(s.clone()),
        Some(V::Strings(v)) => Some(v.join(", ")),
        Some(V::StyledStr(s)) => Some(s.to_string()),
        Some(V::StyledStrs(v)) => Some(
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Some(V::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let arg = text(C::InvalidArg).unwrap_or_default();
    let value = text(C::InvalidValue).unwrap_or_default();
    let mut line = match e.kind() {
        K::InvalidValue if value.is_empty() => format!("a value is required for '{arg}'"),
        K::InvalidValue => format!("invalid value '{value}' for '{arg}'"),
        K::ValueValidation => match std::error::Error::source(e) {
            Some(why) => format!("invalid value '{value}' for '{arg}': {why}"),
            None => format!("invalid value '{value}' for '{arg}'"),
        },
        K::ArgumentConflict => match text(C::PriorArg) {
            Some(prior) if prior == arg => {
                format!("the argument '{arg}' cannot be used multiple times")
            }
            Some(prior) => format!("the argument '{arg}' cannot be used with '{prior}'"),
            None => format!("the argument '{arg}' cannot be used here"),
        },
        K::UnknownArgument => format!("unexpected argument '{arg}'"),
        K::InvalidSubcommand => format!(
            "unrecognized subcommand '{}'",
            text(C::InvalidSubcommand).unwrap_or_default()
        ),
        K::MissingRequiredArgument => format!("missing required argument(s): {arg}"),
        K::MissingSubcommand => format!(
            "'{}' needs a subcommand",
            text(C::InvalidSubcommand).unwrap_or_default()
        ),
        K::DisplayHelpOnMissingArgumentOrSubcommand => {
            let path = missing_subcommand_path(e);
            format!("'{}' needs a subcommand", path.join(" "))
        }
        K::TooManyValues => format!("unexpected value '{value}' for '{arg}'"),
        _ => {
            // Kinds without context of their own: clap's first line.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default().trim();
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        }
    };
    if let Some(valid) = text(C::ValidValue).filter(|v| !v.is_empty()) {
        line += &format!(" (possible values: {valid})");
    }
    if let Some(valid) = text(C::ValidSubcommand) {
        line += &format!(" (one of: {valid})");
    }
    if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
        line += &subcommands_of(&missing_subcommand_path(e));
    }
    for k in [C::SuggestedSubcommand, C::SuggestedArg, C::SuggestedValue] {
        if let Some(s) = text(k).filter(|s| !s.is_empty()) {
            let s = s.replace(", ", "' or '");
            line += &format!(" (did you mean '{s}'?)");
        }
    }
    line
}

/// " (one of: a, b)": the subcommands of the command at `path`.
fn subcommands_of(path: &[String]) -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    for name in path.iter().skip(1) {
        match cmd.find_subcommand(name) {
            Some(sub) => cmd = sub.clone(),
            None => break,
        }
    }
    let subs: Vec<&str> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| s.get_name())
        .collect();
    if subs.is_empty() {
        String::new()
    } else {
        format!(" (one of: {})", subs.join(", "))
    }
}

/// The command path ("ztredir ztunnel") of a help-on-missing-subcommand
/// error, which carries it only in its usage line.
fn missing_subcommand_path(e: &clap::Error) -> Vec<String> {
    let rendered = e.render().to_string();
    let usage = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .unwrap_or("ztredir");
    usage
        .split_whitespace()
        .take_while(|w| !w.starts_with(['[', '<', '-']))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    /// man/ is generated from these definitions (`ztredir man man/`); this
    /// fails when the CLI changed and the pages were not regenerated.
    #[test]
    fn man_pages_are_fresh() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let pages = super::man_pages();
        assert!(pages.len() > 10, "one page per subcommand");
        for (name, text) in &pages {
            let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                on_disk == *text,
                "man/{name} is stale: run `cargo run -- man man/`"
            );
        }
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(files, pages.len(), "man/ holds a page no subcommand has");
    }
}
