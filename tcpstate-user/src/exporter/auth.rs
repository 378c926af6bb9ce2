//! HTTP basic auth against `basic_auth_users` (bcrypt hashes), as exporter-toolkit does it
//! (web/handler.go): an unknown user still costs one bcrypt comparison against a fixed hash, so
//! the answer's timing does not tell which user names exist; the password check itself is
//! bcrypt's constant-time comparison; and users are found with a constant-time name compare.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), too slow for every scrape, so a
//! successful check is remembered by a SHA-256 of user, hash and password: the password itself is
//! never kept, and a changed hash in the file no longer matches the remembered entry.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
};

use base64::Engine;
use subtle::ConstantTimeEq;

/// A bcrypt hash of a password nobody has, compared against when the user is unknown.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// Remembered successful checks at most; past that the memory starts over.
const CACHE_MAX: usize = 256;

pub struct Users {
    users: Vec<(String, String)>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Users {
    pub fn new(users: BTreeMap<String, String>) -> Result<Users, String> {
        for (name, hash) in &users {
            // A malformed hash would fail every request; say so at load instead. Parsing only:
            // a reload runs on the serving thread and must not pay bcrypt's cost per user.
            if let Err(e) = hash.parse::<bcrypt::HashParts>() {
                return Err(format!(
                    "basic_auth_users: the hash of {name:?} is not a bcrypt hash ({e}): make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                ));
            }
        }
        Ok(Users {
            users: users.into_iter().collect(),
            verified: Mutex::new(HashSet::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether an `Authorization` header value carries valid credentials. Blocks for a bcrypt
    /// comparison when the credentials were not seen before: call it off the async runtime.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        // Every entry is compared, whatever matches, so the time does not depend on where (or
        // whether) the name is in the list.
        let mut found: Option<&str> = None;
        for (name, hash) in &self.users {
            if bool::from(name.as_bytes().ct_eq(user.as_bytes())) {
                found = Some(hash);
            }
        }
        let hash = found.unwrap_or(DUMMY_HASH);
        let key = cache_key(&user, hash, &password);
        let lock = || {
            self.verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if found.is_some() && lock().contains(&key) {
            return true;
        }
        let ok = bcrypt::verify(&password, hash).unwrap_or(false) && found.is_some();
        if ok {
            let mut v = lock();
            if v.len() >= CACHE_MAX {
                v.clear();
            }
            v.insert(key);
        }
        ok
    }
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, password] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `Basic base64(user:password)` (RFC 7617). The scheme name is case-insensitive.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pass: &str) -> Vec<u8> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {token}").into_bytes()
    }

    fn users() -> Users {
        // Cost 4, the least bcrypt allows, keeps the test fast; the check does not depend on it.
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        Users::new(BTreeMap::from([("alice".to_string(), hash)])).unwrap()
    }

    #[test]
    fn only_the_right_user_and_password_pass() {
        let u = users();
        assert!(u.check(Some(&header("alice", "s3cret"))));
        // Twice: the second answer comes from the remembered check and must agree.
        assert!(u.check(Some(&header("alice", "s3cret"))));
        assert!(!u.check(Some(&header("alice", "wrong"))));
        assert!(!u.check(Some(&header("bob", "s3cret"))));
        assert!(!u.check(Some(b"Bearer abc")));
        assert!(!u.check(Some(b"Basic !!!")));
        assert!(!u.check(None));
    }

    #[test]
    fn a_remembered_check_does_not_survive_a_changed_hash() {
        let u = users();
        assert!(u.check(Some(&header("alice", "s3cret"))));
        let other = bcrypt::hash("other", 4).unwrap();
        let u2 = Users {
            users: vec![("alice".into(), other)],
            verified: Mutex::new(u.verified.lock().unwrap().clone()),
        };
        assert!(!u2.check(Some(&header("alice", "s3cret"))));
        assert!(u2.check(Some(&header("alice", "other"))));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let u = users();
        let mut h = header("alice", "s3cret");
        h[..5].copy_from_slice(b"bASIC");
        assert!(u.check(Some(&h)));
    }
}
