//! The workspace's `rust-version` against its locked dependency graph: no package in Cargo.lock
//! may declare a newer one, or the declared minimum is a promise the build cannot keep (cargo
//! only warns about it, and only on a toolchain that old). Run by `cargo xtask lint` and by this
//! crate's tests.

use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::root;

/// A rust-version ("1.89", "1.88.0") as numbers, missing parts 0.
fn parse(v: &str) -> Result<[u32; 3]> {
    let mut out = [0; 3];
    let parts: Vec<&str> = v.split('.').collect();
    ensure!(
        (1..=3).contains(&parts.len()),
        "rust-version {v:?}: not MAJOR.MINOR[.PATCH]"
    );
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.parse().with_context(|| format!("rust-version {v:?}"))?;
    }
    Ok(out)
}

/// A locked package that needs a newer Rust than the workspace declares.
pub struct TooNew {
    pub name: String,
    pub version: String,
    pub rust_version: String,
}

/// The workspace members' rust-version and the packages of the lock file that declare a newer
/// one. Every package of Cargo.lock counts, whatever the platform it is built for: `cargo
/// metadata` lists them all.
pub fn too_new() -> Result<(String, Vec<TooNew>)> {
    let o = Command::new("cargo")
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("run cargo metadata")?;
    ensure!(
        o.status.success(),
        "cargo metadata --locked: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .context("workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages = meta["packages"].as_array().context("packages")?;
    let mut declared = None;
    let mut found = Vec::new();
    for p in packages.iter() {
        let id = p["id"].as_str().unwrap_or_default();
        let rv = p["rust_version"].as_str();
        if members.contains(&id) {
            let rv = rv.with_context(|| format!("{id}: no rust-version"))?;
            ensure!(
                declared.is_none_or(|d| d == rv),
                "workspace members declare different rust-versions ({rv} and {declared:?})"
            );
            declared = Some(rv);
        }
    }
    let declared = declared.context("no workspace member")?.to_string();
    let ws = parse(&declared)?;
    for p in packages {
        if let Some(rv) = p["rust_version"].as_str() {
            if parse(rv)? > ws {
                found.push(TooNew {
                    name: p["name"].as_str().unwrap_or_default().to_string(),
                    version: p["version"].as_str().unwrap_or_default().to_string(),
                    rust_version: rv.to_string(),
                });
            }
        }
    }
    Ok((declared, found))
}

pub fn check() -> Result<()> {
    let (declared, newer) = too_new()?;
    let list: Vec<String> = newer
        .iter()
        .map(|p| format!("{} {} needs Rust {}", p.name, p.version, p.rust_version))
        .collect();
    ensure!(
        newer.is_empty(),
        "Cargo.toml declares rust-version = \"{declared}\", but locked dependencies need newer: {}. \
         Raise [workspace.package] rust-version to the highest of these.",
        list.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert!(parse("1.89").unwrap() > parse("1.88.0").unwrap());
        assert!(parse("1.100").unwrap() > parse("1.99.1").unwrap());
        assert_eq!(parse("1.87").unwrap(), parse("1.87.0").unwrap());
        assert!(parse("1.x").is_err());
    }

    #[test]
    fn no_locked_dependency_needs_a_newer_rust_than_the_workspace_declares() {
        check().unwrap();
    }
}
