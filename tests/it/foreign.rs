// SPDX-License-Identifier: Apache-2.0
//! Other tools' tc programs on a workload veth (a classic cls_bpf filter on
//! both hooks and a TCX program on ingress) must neither stop capture nor be
//! touched by ztredir: after `attach` and `detach` they are still there,
//! with their qdisc, and only ztredir's own programs are gone.

use std::ffi::CString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;

use libbpf_rs::libbpf_sys as sys;
use ztredir::dataplane::attach::{attach_tcx, prog_id, Hook};
use ztredir::dataplane::bpf::obj_pin;

use crate::node::*;
use crate::testbed::*;

/// ztredir's classic filters' handle, as `tc` prints it.
const ZTREDIR_HANDLE: &str = "handle 0x7a72";
/// The foreign classic filter's preference and handle.
const FOREIGN_PREF: &str = "100";
const FOREIGN_HANDLE: &str = "0x5";

/// Loads a SCHED_CLS program that returns TC_ACT_UNSPEC (-1): "continue",
/// i.e. the next classic filter, or the next TCX program.
pub fn load_continue_prog(name: &str) -> OwnedFd {
    let mut mov = sys::bpf_insn {
        code: (sys::BPF_ALU64 | sys::BPF_MOV | sys::BPF_K) as u8,
        imm: -1,
        ..Default::default()
    };
    mov.set_dst_reg(sys::BPF_REG_0 as u8);
    let exit = sys::bpf_insn {
        code: (sys::BPF_JMP | sys::BPF_EXIT) as u8,
        ..Default::default()
    };
    let insns = [mov, exit];
    let cname = CString::new(name).expect("program name");
    // SAFETY: valid C strings and instruction array for the duration of
    // the call; no options.
    let fd = unsafe {
        sys::bpf_prog_load(
            sys::BPF_PROG_TYPE_SCHED_CLS,
            cname.as_ptr(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            std::ptr::null_mut(),
        )
    };
    assert!(
        fd >= 0,
        "load foreign program {name}: {}",
        std::io::Error::from_raw_os_error(-fd)
    );
    // SAFETY: a fresh fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn id_of(fd: &OwnedFd) -> u32 {
    prog_id(fd.as_fd()).expect("foreign program id")
}

/// The ifindex of `iface` in the namespace of `pod`.
pub fn ifindex(topo: &Topo, pod: &str, iface: &str) -> u32 {
    let out = topo.sh_ok(pod, &["ip", "-j", "link", "show", iface]);
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j link show {iface}: {e}"));
    let idx = json[0]["ifindex"].as_u64();
    idx.unwrap_or_else(|| panic!("no ifindex for {iface}: {out}")) as u32
}

/// The ids of the programs on a TCX hook of `ifindex`, in the namespace at
/// `ns`, in order.
pub fn tcx_prog_ids(ns: &Path, ifindex: u32, hook: Hook) -> Vec<u32> {
    let attach_type = match hook {
        Hook::Ingress => sys::BPF_TCX_INGRESS,
        Hook::Egress => sys::BPF_TCX_EGRESS,
    };
    in_netns(ns, move || {
        let mut ids = [0u32; 64];
        let mut opts = sys::bpf_prog_query_opts {
            sz: std::mem::size_of::<sys::bpf_prog_query_opts>() as _,
            prog_ids: ids.as_mut_ptr(),
            ..Default::default()
        };
        opts.__bindgen_anon_1.prog_cnt = ids.len() as u32;
        // SAFETY: opts points at a buffer of prog_cnt ids that outlives the call.
        let ret = unsafe { sys::bpf_prog_query_opts(ifindex as i32, attach_type, &mut opts) };
        assert_eq!(
            ret,
            0,
            "query TCX {} of ifindex {ifindex}: {}",
            hook.name(),
            std::io::Error::from_raw_os_error(-ret)
        );
        // SAFETY: both union fields are the same u32.
        let n = unsafe { opts.__bindgen_anon_1.prog_cnt } as usize;
        ids[..n].to_vec()
    })
}

/// `tc filter show dev va <hook>` in the node netns.
fn va_filters(node: &Node, hook: Hook) -> String {
    node.topo
        .sh_ok("node", &["tc", "filter", "show", "dev", "va", hook.name()])
}

/// The foreign filter's line is there, still running program `id`.
fn assert_foreign_filter(node: &Node, hook: Hook, id: u32, when: &str) {
    let f = va_filters(node, hook);
    let line = f
        .lines()
        .find(|l| l.contains(&format!("handle {FOREIGN_HANDLE} ")));
    let line = line.unwrap_or_else(|| {
        panic!(
            "{when} ({}): foreign filter handle {FOREIGN_HANDLE} gone from va {}:\n{f}",
            node.mode,
            hook.name()
        )
    });
    assert!(
        line.contains(&format!("pref {FOREIGN_PREF} ")) && line.contains(&format!(" id {id} ")),
        "{when} ({}): foreign filter on va {} changed: {line}",
        node.mode,
        hook.name()
    );
}

fn foreign_programs_survive(mode: &'static str) {
    let node = Node::new(mode);
    node.set_ztunnel(&[]);
    let topo = &node.topo;
    let node_ns = topo.ns_path("node");
    let va = ifindex(topo, "node", "va");

    // Another tool's classic filter on both hooks of va...
    let tc_prog = load_continue_prog("foreign_tc");
    let tc_id = id_of(&tc_prog);
    let tc_pin = topo.pin_dir().join("foreign_tc");
    obj_pin(tc_prog.as_fd(), &tc_pin).expect("pin foreign_tc");
    let tc_pin = tc_pin.to_str().expect("pin path is UTF-8");
    topo.sh_ok("node", &["tc", "qdisc", "add", "dev", "va", "clsact"]);
    for hook in [Hook::Ingress, Hook::Egress] {
        topo.sh_ok(
            "node",
            &[
                "tc",
                "filter",
                "add",
                "dev",
                "va",
                hook.name(),
                "pref",
                FOREIGN_PREF,
                "handle",
                FOREIGN_HANDLE,
                "bpf",
                "da",
                "object-pinned",
                tc_pin,
            ],
        );
    }
    // ...and its TCX program on ingress, its link pinned outside our pins.
    let tcx_prog = load_continue_prog("foreign_tcx");
    let tcx_id = id_of(&tcx_prog);
    let link_pin = topo.pin_dir().join("foreign_link");
    let fd = tcx_prog.try_clone().expect("dup foreign_tcx fd");
    in_netns(&node_ns, move || {
        attach_tcx(fd.as_fd(), va, Hook::Ingress, &link_pin).expect("attach foreign TCX program")
    });
    assert_eq!(
        tcx_prog_ids(&node_ns, va, Hook::Ingress),
        [tcx_id],
        "TCX ingress of va before attach ({mode})"
    );

    // Capture works with them in place, and they stay while attached.
    let remote = TcpServer::start(&topo.ns_path("remote"), sa("10.99.0.2:8080"));
    node.ok(&["attach", "va"]);
    let t = node.transfer("a", None, remote.addr, 4096, 4096);
    let line = node.proxy_line_for(t.local);
    assert_eq!(
        line["listener"], 15001,
        "a -> remote with foreign programs on va ({mode}): {line}"
    );
    let ingress = tcx_prog_ids(&node_ns, va, Hook::Ingress);
    assert!(
        ingress.contains(&tcx_id),
        "foreign TCX program {tcx_id} gone after attach ({mode}): {ingress:?}"
    );
    for hook in [Hook::Ingress, Hook::Egress] {
        assert_foreign_filter(&node, hook, tc_id, "after attach");
    }

    // After detach: theirs intact, ours gone.
    node.ok(&["detach", "va"]);
    for hook in [Hook::Ingress, Hook::Egress] {
        assert_foreign_filter(&node, hook, tc_id, "after detach");
        let f = va_filters(&node, hook);
        assert!(
            !f.contains(ZTREDIR_HANDLE),
            "ztredir's filter still on va {} after detach ({mode}):\n{f}",
            hook.name()
        );
    }
    let qdiscs = topo.sh_ok("node", &["tc", "qdisc", "show", "dev", "va"]);
    assert!(
        qdiscs.contains("clsact"),
        "clsact qdisc gone from va after detach ({mode}):\n{qdiscs}"
    );
    assert_eq!(
        tcx_prog_ids(&node_ns, va, Hook::Ingress),
        [tcx_id],
        "TCX ingress of va after detach: only the foreign program ({mode})"
    );
    assert_eq!(
        tcx_prog_ids(&node_ns, va, Hook::Egress),
        [0u32; 0],
        "TCX egress of va after detach ({mode})"
    );
    let status = node.status_json();
    let names: Vec<&str> = status["interfaces"]
        .as_array()
        .expect("status interfaces")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"va"),
        "va still in status after detach ({mode}): {names:?}"
    );

    // a -> remote goes direct now: the server sees a itself.
    let before = node.proxy_lines().len();
    let t = node.transfer("a", None, remote.addr, 4096, 4096);
    assert!(
        remote.accepted().iter().any(|r| r.peer == t.local),
        "a -> remote after detach ({mode}): server did not see {} itself: {:?}",
        t.local,
        remote.accepted()
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        node.proxy_lines().len(),
        before,
        "a -> remote after detach ({mode}) went through the proxy"
    );
}

#[test]
fn foreign_programs_survive_tcx() {
    foreign_programs_survive("tcx");
}

#[test]
fn foreign_programs_survive_tc() {
    foreign_programs_survive("tc");
}
