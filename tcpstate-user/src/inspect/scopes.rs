//! What the inspection commands know of scopes: the names a running daemon gave them (its pinned
//! scope info) and, for finding a socket's owner, the kernel's socket table inside each one.

use std::collections::BTreeMap;

use aya::maps::{Array, MapData};
use tcpstate_common::scope::{self, ScopeInfo};

use crate::{
    containers::netns::{self, Netns, NetnsId},
    sockets::sockdiag::{self, Socket},
};

/// A scope as the inspection commands show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeName {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub container_id: String,
    /// The namespace (none for the host's scope).
    pub netns: Option<NetnsId>,
}

impl ScopeName {
    /// `namespace/pod` for a pod, the container's name for a container, empty for the host.
    pub fn short(&self) -> String {
        if !self.pod.is_empty() {
            format!("{}/{}", self.namespace, self.pod)
        } else {
            self.container.clone()
        }
    }

    /// Whether `--container` / `--pod` filters keep it (`--pod` as `NAME` or `NAMESPACE/NAME`).
    pub fn matches(&self, container: Option<&str>, pod: Option<&str>) -> bool {
        let container_ok = container.is_none_or(|c| {
            self.container == c || (c.len() >= 12 && self.container_id.starts_with(c))
        });
        let pod_ok = pod.is_none_or(|p| match p.split_once('/') {
            Some((ns, name)) => self.namespace == ns && self.pod == name,
            None => self.pod == p,
        });
        container_ok && pod_ok
    }
}

/// Every scope's name, from the daemon's pinned scope info; the host's is empty.
pub fn names(info: &Array<MapData, ScopeInfo>) -> BTreeMap<u32, ScopeName> {
    let mut out = BTreeMap::from([(scope::HOST, ScopeName::default())]);
    for i in 1..info.len() {
        let Ok(s) = info.get(&i, 0) else { continue };
        if s.state != scope::state::ACTIVE {
            continue;
        }
        out.insert(
            i,
            ScopeName {
                namespace: scope::get_str(&s.namespace).to_string(),
                pod: scope::get_str(&s.pod).to_string(),
                container: scope::get_str(&s.container).to_string(),
                container_id: scope::get_str(&s.container_id).to_string(),
                netns: Some(NetnsId {
                    dev: s.netns_dev,
                    ino: s.netns_ino,
                }),
            },
        );
    }
    out
}

/// The TCP sockets of each scope's namespace (the host's is the caller's own), for the scopes in
/// `wanted`. A namespace that cannot be found or entered gives none: its leaks are shown without
/// an owner.
pub fn sockets(
    names: &BTreeMap<u32, ScopeName>,
    wanted: impl IntoIterator<Item = u32>,
) -> BTreeMap<u32, Vec<Socket>> {
    let own = NetnsId::own().ok();
    let mut candidates = None;
    let mut out = BTreeMap::new();
    for scope in wanted {
        let Some(name) = names.get(&scope) else {
            continue;
        };
        let socks = match name.netns {
            None => sockdiag::dump_tcp().unwrap_or_default(),
            Some(id) => {
                let cands = candidates
                    .get_or_insert_with(|| own.map(netns::candidates).unwrap_or_default());
                cands
                    .iter()
                    .find(|c| c.id == id)
                    .and_then(|c| Netns::open(&c.path, id).ok())
                    .and_then(|ns| ns.run(sockdiag::dump_tcp).ok())
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
        };
        out.insert(scope, socks);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_names_ids_and_pods_with_or_without_namespace() {
        let pod = ScopeName {
            namespace: "shop".into(),
            pod: "web-0".into(),
            container_id: "3f2a9c1d0b7e4f5a".into(),
            ..ScopeName::default()
        };
        assert!(pod.matches(None, Some("web-0")));
        assert!(pod.matches(None, Some("shop/web-0")));
        assert!(!pod.matches(None, Some("other/web-0")));
        assert!(pod.matches(Some("3f2a9c1d0b7e"), None));
        assert!(!pod.matches(Some("3f2a"), None), "too short a prefix");
        assert_eq!(pod.short(), "shop/web-0");
        let ctr = ScopeName {
            container: "leaky".into(),
            ..ScopeName::default()
        };
        assert!(ctr.matches(Some("leaky"), None));
        assert!(!ctr.matches(None, Some("leaky")));
        assert!(ScopeName::default().matches(None, None));
    }
}
