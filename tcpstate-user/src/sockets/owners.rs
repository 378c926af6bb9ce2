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
    let mut users = HashMap::new();
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
            let o = owner.get_or_insert_with(|| describe(pid, &mut users));
            let list = out.entry(inode).or_default();
            if !list.iter().any(|x| x.pid == pid) {
                list.push(o.clone());
            }
        }
    }
    out
}

fn describe(pid: u32, users: &mut HashMap<u32, String>) -> Owner {
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
        user: user_name(uid, users),
    }
}

/// uid -> user name through getpwuid_r, so every NSS source answers (files, LDAP, sssd,
/// systemd-homed), each uid asked once per scan (`cache`); the number when none knows it.
fn user_name(uid: u32, cache: &mut HashMap<u32, String>) -> String {
    cache
        .entry(uid)
        .or_insert_with(|| {
            uzers::get_user_by_uid(uid)
                .map(|u| u.name().to_string_lossy().into_owned())
                .unwrap_or_else(|| uid.to_string())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_named_through_nss_or_left_as_numbers() {
        let mut cache = HashMap::new();
        assert_eq!(user_name(0, &mut cache), "root");
        // One /etc/passwd names, other than root, when there is one.
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        if let Some((name, uid)) = passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), f.get(2)?.parse::<u32>().ok()?))
            })
            .filter(|(_, uid)| *uid != 0)
        {
            assert_eq!(user_name(uid, &mut cache), name);
        }
        // No source knows this uid (the largest valid one, below (uid_t)-1).
        assert_eq!(user_name(4_294_967_294, &mut cache), "4294967294");
        assert_eq!(
            cache.get(&4_294_967_294).map(String::as_str),
            Some("4294967294")
        );
    }
}
