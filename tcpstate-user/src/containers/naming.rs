//! Naming a namespace from the container runtime's own state, without a Kubernetes API client:
//! a process inside it -> its cgroup path -> the container id (and pod uid) -> the runtime's
//! metadata for that id -> `namespace`/`pod` labels for Kubernetes pods, `container` for
//! standalone containers. `--container-names FILE` overrides any of it.
//!
//! Every reader here is a pure function of file contents, so each runtime's layout is tested
//! without that runtime; the paths are read under `--host-root` (a DaemonSet mounts the host's
//! runtime state there).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::background::scopes::Labels;

/// The container runtime a cgroup path points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
}

/// What a process's cgroup path says about its container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIds {
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    /// Kubernetes pod UID (dashes restored), when the path runs through a kubepods slice.
    pub pod_uid: Option<String>,
}

/// Reads `/proc/PID/cgroup` content (v1, v2 or hybrid: every line is looked at). Systemd and
/// cgroupfs drivers name containers differently (`docker-ID.scope` vs `/docker/ID`); the id is the
/// 64-hex component, the runtime the prefix before it.
pub fn from_cgroup(text: &str) -> CgroupIds {
    let mut ids = CgroupIds::default();
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.split('/') {
            if let Some(uid) = pod_uid(part) {
                ids.pod_uid = Some(uid);
            }
            if let Some((id, rt)) = container_part(part) {
                ids.container_id = Some(id);
                if rt.is_some() {
                    ids.runtime = rt;
                }
            }
        }
    }
    ids
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A path component naming a container: `docker-ID.scope`, `libpod-ID.scope`,
/// `cri-containerd-ID.scope`, `crio-ID.scope`, or a bare ID under a runtime's directory.
fn container_part(part: &str) -> Option<(String, Option<Runtime>)> {
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, rt) in [
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
    ] {
        if let Some(id) = stem.strip_prefix(prefix) {
            // crio-conmon-ID is the monitor, not the container.
            return is_id(id).then(|| (id.to_string(), Some(rt)));
        }
    }
    is_id(stem).then(|| (stem.to_string(), None))
}

/// `kubepods-besteffort-pod<uid with _>.slice` (systemd) or `pod<uid>` (cgroupfs).
fn pod_uid(part: &str) -> Option<String> {
    let stem = part.strip_suffix(".slice").unwrap_or(part);
    let uid = match stem.strip_prefix("pod") {
        Some(uid) => uid,
        None => stem.rsplit('-').next()?.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// The annotations of an OCI runtime spec (`config.json`).
#[derive(Deserialize, Default)]
struct OciSpec {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// Kubernetes pod names from an OCI spec's annotations: containerd's CRI plugin writes
/// `io.kubernetes.cri.sandbox-{name,namespace}`, CRI-O `io.kubernetes.pod.{name,namespace}`.
pub fn from_oci_config(json: &str) -> Option<(String, String)> {
    let spec: OciSpec = serde_json::from_str(json).ok()?;
    let a = &spec.annotations;
    let pair = |ns: &str, pod: &str| Some((a.get(ns)?.clone(), a.get(pod)?.clone()));
    pair(
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.cri.sandbox-name",
    )
    .or_else(|| pair("io.kubernetes.pod.namespace", "io.kubernetes.pod.name"))
}

/// A standalone container's name from an OCI spec (nerdctl writes `nerdctl/name`).
fn name_from_oci_config(json: &str) -> Option<String> {
    let spec: OciSpec = serde_json::from_str(json).ok()?;
    spec.annotations.get("nerdctl/name").cloned()
}

/// Docker's `config.v2.json`: `"Name": "/web"`.
pub fn from_docker_config(json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(rename = "Name")]
        name: String,
    }
    let c: Config = serde_json::from_str(json).ok()?;
    let name = c.name.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

/// containers/storage's `containers.json` (podman, CRI-O): `[{"id": ..., "names": [...]}]`.
pub fn from_storage_containers(json: &str, id: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        names: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_str(json).ok()?;
    entries
        .into_iter()
        .find(|e| e.id == id)
        .and_then(|e| e.names.into_iter().next())
}

/// Where each runtime keeps what names a container, under the host root.
pub struct Runtimes {
    pub root: PathBuf,
}

impl Runtimes {
    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel.trim_start_matches('/'))).ok()
    }

    /// Kubernetes names for a sandbox or container id: containerd's task bundles (any
    /// containerd namespace, `k8s.io` for the CRI plugin), then CRI-O's.
    fn kubernetes(&self, id: &str) -> Option<(String, String)> {
        self.oci_configs(id).iter().find_map(|j| from_oci_config(j))
    }

    fn oci_configs(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        let tasks = self
            .root
            .join("run/containerd/io.containerd.runtime.v2.task");
        if let Ok(namespaces) = std::fs::read_dir(tasks) {
            for ns in namespaces.flatten() {
                if let Ok(j) = std::fs::read_to_string(ns.path().join(id).join("config.json")) {
                    out.push(j);
                }
            }
        }
        for rel in [
            format!("run/containers/storage/overlay-containers/{id}/userdata/config.json"),
            format!("var/lib/containers/storage/overlay-containers/{id}/userdata/config.json"),
        ] {
            if let Some(j) = self.read(&rel) {
                out.push(j);
            }
        }
        out
    }

    /// A standalone container's name.
    fn name(&self, id: &str, runtime: Option<Runtime>) -> Option<String> {
        let docker = || {
            self.read(&format!("var/lib/docker/containers/{id}/config.v2.json"))
                .and_then(|j| from_docker_config(&j))
        };
        let storage = || {
            ["var/lib/containers/storage", "run/containers/storage"]
                .iter()
                .find_map(|dir| {
                    self.read(&format!("{dir}/overlay-containers/containers.json"))
                        .and_then(|j| from_storage_containers(&j, id))
                })
        };
        let nerdctl = || {
            self.oci_configs(id)
                .iter()
                .find_map(|j| name_from_oci_config(j))
        };
        match runtime {
            Some(Runtime::Docker) => docker(),
            Some(Runtime::Podman | Runtime::CriO) => storage(),
            _ => docker().or_else(storage).or_else(nerdctl),
        }
    }

    /// Labels for a namespace whose processes include `pids` (lowest first) and whose bind mount,
    /// if any, is `mount_name`. Never fails: what cannot be read falls back to the short id.
    pub fn label(&self, pids: &[u32], mount_name: Option<&str>, netns_ino: u64) -> Labels {
        // The first process in a container's cgroup names it (a pod's processes share the
        // sandbox's namespace; the sandbox's id finds the pod's names).
        let found = pids.iter().find_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let ids = from_cgroup(&text);
            ids.container_id.is_some().then_some(ids)
        });
        if let Some(ids) = found {
            let id = ids.container_id.clone().unwrap_or_default();
            if let Some((namespace, pod)) = self.kubernetes(&id) {
                return Labels {
                    namespace,
                    pod,
                    container: String::new(),
                    container_id: id,
                };
            }
            let container = self
                .name(&id, ids.runtime)
                .unwrap_or_else(|| id[..12].to_string());
            return Labels {
                container,
                container_id: id,
                ..Labels::default()
            };
        }
        // No process yet (the runtime made the namespace and its veth first), or one outside any
        // container's cgroup: the bind mount's name, else the namespace's inode.
        Labels {
            container: mount_name
                .map(str::to_string)
                .unwrap_or_else(|| format!("netns-{netns_ino}")),
            ..Labels::default()
        }
    }
}

/// Whether a namespace's bind-mount name is one a container runtime gives a namespace it made
/// before the container's first process: podman/netavark's `netns-UUID`, the CNI plugins'
/// `cni-UUID` (containerd, CRI-O), Docker's 12 hex digits. Such a name is provisional: the
/// process, when it comes, names the container. Any other name (`ip netns add NAME`) is final.
pub fn provisional_mount(name: &str) -> bool {
    let uuid = |s: &str| {
        s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            })
    };
    name.strip_prefix("netns-").is_some_and(uuid)
        || name.strip_prefix("cni-").is_some_and(uuid)
        || (name.len() == 12 && name.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `--container-names FILE`: labels that win over what the runtime says.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default, rename = "container")]
    pub entries: Vec<Override>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// A container id or a prefix of one (12 hex digits or more), a namespace bind-mount name,
    /// or `netns-INODE`.
    #[serde(rename = "match")]
    pub matches: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub container: String,
}

impl Overrides {
    pub fn load(path: &Path) -> Result<Overrides, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --container-names {}: {e}", path.display()))?;
        let o: Overrides = toml::from_str(&text).map_err(|e| {
            format!(
                "--container-names {}: {}",
                path.display(),
                e.message().trim()
            )
        })?;
        if let Some(bad) = o.entries.iter().find(|e| e.matches.trim().is_empty()) {
            return Err(format!(
                "--container-names {}: an entry has an empty match (container {:?})",
                path.display(),
                bad.container
            ));
        }
        Ok(o)
    }

    /// Whether an entry matches (the user named the namespace: nothing is provisional then).
    pub fn matches(&self, labels: &Labels, mount_name: Option<&str>, netns_ino: u64) -> bool {
        self.hit(labels, mount_name, netns_ino).is_some()
    }

    /// Applies the first entry that matches the container id, the mount name or the inode.
    pub fn apply(&self, labels: Labels, mount_name: Option<&str>, netns_ino: u64) -> Labels {
        match self.hit(&labels, mount_name, netns_ino) {
            Some(e) => Labels {
                namespace: e.namespace.clone(),
                pod: e.pod.clone(),
                container: e.container.clone(),
                container_id: labels.container_id,
            },
            None => labels,
        }
    }

    fn hit(&self, labels: &Labels, mount_name: Option<&str>, netns_ino: u64) -> Option<&Override> {
        let by_inode = format!("netns-{netns_ino}");
        self.entries.iter().find(|e| {
            let m = e.matches.trim();
            (m.len() >= 12 && labels.container_id.starts_with(m))
                || mount_name == Some(m)
                || m == by_inode
        })
    }
}

#[cfg(test)]
mod provisional_tests {
    use super::provisional_mount;

    #[test]
    fn runtime_mount_names_are_provisional_and_user_names_final() {
        assert!(
            provisional_mount("netns-3f2a6c1e-8b4d-4e2f-9a1b-0c2d3e4f5a6b"),
            "podman"
        );
        assert!(
            provisional_mount("cni-3f2a6c1e-8b4d-4e2f-9a1b-0c2d3e4f5a6b"),
            "CNI"
        );
        assert!(provisional_mount("0123456789ab"), "docker");
        assert!(!provisional_mount("blue"), "ip netns add blue");
        assert!(!provisional_mount("netns-blue"));
        assert!(!provisional_mount("cni-3f2a6c1e"), "not a whole UUID");
        assert!(!provisional_mount("tse2e-12345-ctr"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1d0b7e4f5a8c6d2e1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";

    #[test]
    fn cgroup_paths_of_every_runtime_and_driver_give_the_container_id() {
        let cases = [
            (
                format!("0::/system.slice/docker-{ID}.scope"),
                Some(Runtime::Docker),
            ),
            (format!("12:pids:/docker/{ID}\n0::/"), None),
            (
                format!("0::/machine.slice/libpod-{ID}.scope/container"),
                Some(Runtime::Podman),
            ),
            (
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b1c2d3e_4f5a_6b7c_8d9e_0f1a2b3c4d5e.slice/cri-containerd-{ID}.scope"),
                Some(Runtime::Containerd),
            ),
            (
                format!("0::/kubepods.slice/kubepods-pod0b1c2d3e_4f5a_6b7c_8d9e_0f1a2b3c4d5e.slice/crio-{ID}.scope"),
                Some(Runtime::CriO),
            ),
        ];
        for (text, rt) in cases {
            let ids = from_cgroup(&text);
            assert_eq!(ids.container_id.as_deref(), Some(ID), "{text}");
            assert_eq!(ids.runtime, rt, "{text}");
        }
        let k8s = from_cgroup(&cases_pod());
        assert_eq!(
            k8s.pod_uid.as_deref(),
            Some("0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e")
        );
        // The host's own processes and conmon are in no container.
        assert_eq!(
            from_cgroup("0::/user.slice/user-0.slice/session-1.scope").container_id,
            None
        );
        assert_eq!(
            from_cgroup(&format!("0::/machine.slice/crio-conmon-{ID}.scope")).container_id,
            None
        );
    }

    fn cases_pod() -> String {
        format!("0::/kubepods/besteffort/pod0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e/{ID}")
    }

    #[test]
    fn runtime_metadata_gives_names() {
        assert_eq!(
            from_oci_config(
                r#"{"annotations":{"io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop"}}"#
            ),
            Some(("shop".into(), "web-0".into()))
        );
        assert_eq!(
            from_oci_config(
                r#"{"annotations":{"io.kubernetes.pod.name":"db-1","io.kubernetes.pod.namespace":"data"}}"#
            ),
            Some(("data".into(), "db-1".into()))
        );
        assert_eq!(from_oci_config(r#"{"ociVersion":"1.0.2"}"#), None);
        assert_eq!(from_oci_config("not json"), None);
        assert_eq!(
            from_docker_config(r#"{"Name":"/web","ID":"x"}"#),
            Some("web".into())
        );
        let storage =
            format!(r#"[{{"id":"{ID}","names":["leaky"]}},{{"id":"other","names":["x"]}}]"#);
        assert_eq!(from_storage_containers(&storage, ID), Some("leaky".into()));
        assert_eq!(from_storage_containers(&storage, "nope"), None);
    }

    #[test]
    fn overrides_match_by_id_prefix_mount_name_or_inode() {
        let o: Overrides = toml::from_str(
            r#"
            [[container]]
            match = "3f2a9c1d0b7e"
            container = "billing"
            [[container]]
            match = "netns-1234"
            namespace = "prod"
            pod = "api-0"
            "#,
        )
        .unwrap();
        let from_runtime = Labels {
            container: "3f2a9c1d0b7e".into(),
            container_id: ID.into(),
            ..Labels::default()
        };
        assert_eq!(o.apply(from_runtime.clone(), None, 1).container, "billing");
        let by_inode = o.apply(Labels::default(), None, 1234);
        assert_eq!(
            (by_inode.namespace.as_str(), by_inode.pod.as_str()),
            ("prod", "api-0")
        );
        let untouched = Labels {
            container: "web".into(),
            ..Labels::default()
        };
        assert_eq!(o.apply(untouched.clone(), Some("netns-x"), 9), untouched);
    }
}
