//! Which process holds a socket: sock_diag gives the socket's inode, `/proc/<pid>/fd/*` links name
//! `socket:[<inode>]`. A socket shared after fork has several owners.

use std::{
    collections::{HashMap, HashSet},
    fs,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/<pid>/comm`.
    pub command: String,
    /// `/proc/<pid>/cmdline`, arguments joined by spaces.
    pub cmdline: String,
    pub uid: u32,
    pub user: String,
}

/// The owners of each inode in `wanted`, by one scan of /proc.
pub fn owners(wanted: &HashSet<u32>) -> HashMap<u32, Vec<Owner>> {
    let mut out: HashMap<u32, Vec<Owner>> = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let users = user_names();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        }; // exited, or not ours to read
        let mut owner: Option<Owner> = None;
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|i| i.parse::<u32>().ok())
            else {
                continue;
            };
            if !wanted.contains(&inode) {
                continue;
            }
            let o = owner.get_or_insert_with(|| describe(pid, &users));
            let list = out.entry(inode).or_default();
            if !list.iter().any(|x| x.pid == pid) {
                list.push(o.clone());
            }
        }
    }
    out
}

fn describe(pid: u32, users: &HashMap<u32, String>) -> Owner {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let uid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX);
    Owner {
        pid,
        command: comm,
        cmdline,
        uid,
        user: users.get(&uid).cloned().unwrap_or_else(|| uid.to_string()),
    }
}

/// uid -> name from /etc/passwd (no NSS: good enough for local accounts, else the number).
fn user_names() -> HashMap<u32, String> {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}
