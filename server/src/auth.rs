//! Tokens: who a caller is.
//!
//! Every caller presents an HS256 JWT signed with the node's secret. [`Keys::verify`]
//! turns a token into an [`Identity`] or refuses it; [`Keys::mint`] signs one (for
//! `backchannel token` and tests). The secret is given (`--jwt-secret`) or generated once
//! and kept in the data directory, so every restart accepts the tokens it issued.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backchannel_protocol::{InboxId, Role, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest `sub` a token may carry.
const MAX_SUB_LEN: usize = 128;
/// Longest `name`: it rides in every event the user writes.
const MAX_NAME_LEN: usize = 256;
/// Longest `handle`, team id and inbox id (the ids' own limit).
const MAX_ID_LEN: usize = 64;
/// Most entries in `teams` and in `inboxes`.
const MAX_LIST_LEN: usize = 500;
/// Seconds of clock skew tolerated on `exp`.
const EXP_LEEWAY_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("cannot read or write the secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// The claims of a Backchannel token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inboxes: Option<Vec<String>>,
    pub exp: u64,
}

/// Which inboxes a staff member may work in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxScope {
    All,
    Only(InboxSet),
}

/// A set of inboxes, sorted in a shared slice: every socket holds its caller's for its
/// life (and the hub a second handle on it, to scope notifications), and most name one
/// or two inboxes, which a hash set would keep in a table of at least four slots plus
/// its hasher's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxSet(Arc<[InboxId]>);

impl InboxSet {
    pub fn contains(&self, inbox: &InboxId) -> bool {
        self.0.binary_search(inbox).is_ok()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, InboxId> {
        self.0.iter()
    }
}

impl FromIterator<InboxId> for InboxSet {
    fn from_iter<I: IntoIterator<Item = InboxId>>(inboxes: I) -> Self {
        let mut list: Vec<InboxId> = inboxes.into_iter().collect();
        list.sort();
        list.dedup();
        InboxSet(list.into())
    }
}

impl InboxScope {
    pub fn allows(&self, inbox: &InboxId) -> bool {
        match self {
            InboxScope::All => true,
            InboxScope::Only(set) => set.contains(inbox),
        }
    }

    /// The inboxes as a store filter: `None` for every inbox.
    pub fn as_filter(&self) -> Option<&[InboxId]> {
        match self {
            InboxScope::All => None,
            InboxScope::Only(set) => Some(&set.0),
        }
    }
}

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user_id: UserId,
    pub role: Role,
    pub name: Option<String>,
    /// The @mention handle: the `handle` claim, else `sub` lower-cased.
    pub handle: String,
    pub teams: Vec<String>,
    /// Meaningful for staff only; customers reach conversations through their contact id.
    pub inboxes: InboxScope,
    /// Unix seconds after which the token is refused (`exp` and the clock-skew leeway):
    /// a socket opened with it is closed then, as HTTP would refuse it.
    pub expires_at: u64,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Identity {
    /// The token has expired (at `now`, Unix seconds), as token validation counts it.
    pub fn expired_at(&self, now: u64) -> bool {
        now > self.expires_at
    }

    fn from_claims(claims: Claims) -> Result<Self, AuthError> {
        check_claim(&claims.sub, "sub", MAX_SUB_LEN)?;
        if let Some(name) = &claims.name {
            check_claim(name, "name", MAX_NAME_LEN)?;
        }
        if let Some(handle) = &claims.handle {
            check_claim(handle, "handle", MAX_ID_LEN)?;
        }
        for (list, what) in [(&claims.teams, "teams"), (&claims.inboxes, "inboxes")] {
            let list = list.as_deref().unwrap_or_default();
            if list.len() > MAX_LIST_LEN {
                return Err(AuthError::Invalid(format!(
                    "`{what}` may name at most {MAX_LIST_LEN}"
                )));
            }
            for entry in list {
                check_claim(entry, what, MAX_ID_LEN)?;
            }
        }
        let inboxes = match (&claims.inboxes, claims.role) {
            (Some(list), _) if list.iter().any(|i| i == "*") => InboxScope::All,
            (Some(list), _) => InboxScope::Only(list.iter().map(|i| InboxId(i.clone())).collect()),
            (None, Role::Supervisor | Role::Admin) => InboxScope::All,
            (None, _) => InboxScope::Only(InboxSet::default()),
        };
        let handle = claims
            .handle
            .clone()
            .unwrap_or_else(|| claims.sub.to_lowercase());
        Ok(Identity {
            user_id: UserId(claims.sub),
            role: claims.role,
            name: claims.name,
            handle,
            teams: claims.teams.unwrap_or_default(),
            inboxes,
            expires_at: claims.exp.saturating_add(EXP_LEEWAY_SECS),
        })
    }
}

/// A text claim: 1 to `max` characters, none of them a control character. A `sub` is
/// who the caller is: one with NUL would be stored as U+FFFD by PostgreSQL (its text
/// cannot hold NUL) and so be the same user as another token's.
fn check_claim(value: &str, what: &str, max: usize) -> Result<(), AuthError> {
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(AuthError::Invalid(format!(
            "`{what}` must be 1 to {max} characters, none of them control characters"
        )));
    }
    Ok(())
}

/// The node's signing and verifying keys.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        // Only HS256: a token naming `none` or any other algorithm fails validation.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        // A token not valid yet is refused too (same leeway).
        validation.validate_nbf = true;
        validation.leeway = EXP_LEEWAY_SECS;
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Identity::from_claims(data.claims)
    }

    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Sign(e.to_string()))
    }
}

/// `exp` for a token valid for `ttl` from now.
pub fn expiry_after(ttl: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + ttl).as_secs()
}

/// The file a generated secret is kept in.
pub fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("jwt-secret")
}

/// The configured secret, or the one kept in the data directory (generated on first use).
/// Returns the secret and, when it came from a file, the file's path.
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<(Vec<u8>, Option<PathBuf>), AuthError> {
    if let Some(secret) = configured {
        return Ok((secret.as_bytes().to_vec(), None));
    }
    let path = secret_path(data_dir);
    let io_err = |source| AuthError::SecretFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            return Ok((text.trim().as_bytes().to_vec(), Some(path)))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(io_err)?;
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes);
    write_private(&path, secret.as_bytes()).map_err(io_err)?;
    Ok((secret.into_bytes(), Some(path)))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role) -> Claims {
        Claims {
            sub: "Alice".into(),
            role,
            name: None,
            handle: None,
            teams: None,
            inboxes: None,
            exp: expiry_after(Duration::from_secs(60)),
        }
    }

    #[test]
    fn round_trip_and_defaults() {
        let keys = Keys::new(b"secret");
        let token = keys.mint(&claims(Role::Agent)).expect("mint");
        let id = keys.verify(&token).expect("verify");
        assert_eq!(id.handle, "alice");
        assert_eq!(id.inboxes, InboxScope::Only(InboxSet::default()));
        let token = keys.mint(&claims(Role::Supervisor)).expect("mint");
        assert_eq!(
            keys.verify(&token).expect("verify").inboxes,
            InboxScope::All
        );
    }

    #[test]
    fn an_inbox_scope_allows_exactly_the_inboxes_its_token_lists() {
        let keys = Keys::new(b"secret");
        let mut claims = claims(Role::Agent);
        claims.inboxes = Some(vec!["sales".into(), "billing".into(), "sales".into()]);
        let id = keys
            .verify(&keys.mint(&claims).expect("mint"))
            .expect("verify");
        for inbox in ["billing", "sales"] {
            assert!(id.inboxes.allows(&InboxId(inbox.into())), "{inbox}");
        }
        for inbox in ["", "bill", "billingx", "support", "*"] {
            assert!(!id.inboxes.allows(&InboxId(inbox.into())), "{inbox}");
        }
        let InboxScope::Only(set) = &id.inboxes else {
            panic!("a token listing inboxes is scoped to them");
        };
        assert_eq!(set.iter().count(), 2, "listed twice, held once");
        claims.inboxes = Some(vec!["sales".into(), "*".into()]);
        let id = keys
            .verify(&keys.mint(&claims).expect("mint"))
            .expect("verify");
        assert!(id.inboxes.allows(&InboxId("anything".into())));
    }

    #[test]
    fn refuses_other_secret_and_expired() {
        let keys = Keys::new(b"secret");
        let other = Keys::new(b"other");
        let token = other.mint(&claims(Role::Agent)).expect("mint");
        assert!(keys.verify(&token).is_err());
        let mut old = claims(Role::Agent);
        old.exp = 1_000;
        let token = keys.mint(&old).expect("mint");
        assert!(keys.verify(&token).is_err());
    }

    #[test]
    fn claims_with_control_characters_or_over_their_limits_are_refused() {
        let keys = Keys::new(b"secret");
        let verify = |claims: &Claims| keys.verify(&keys.mint(claims).expect("mint"));
        type Spoil = Box<dyn Fn(&mut Claims)>;
        let bad: Vec<(&str, Spoil)> = vec![
            // NUL: PostgreSQL would store it as U+FFFD, the same user as "vic\u{FFFD}tim".
            ("sub NUL", Box::new(|c| c.sub = "vic\0tim".into())),
            ("sub tab", Box::new(|c| c.sub = "vic\ttim".into())),
            ("sub empty", Box::new(|c| c.sub = String::new())),
            ("sub long", Box::new(|c| c.sub = "s".repeat(129))),
            ("name NUL", Box::new(|c| c.name = Some("A\0".into()))),
            ("name long", Box::new(|c| c.name = Some("n".repeat(60_000)))),
            ("handle long", Box::new(|c| c.handle = Some("h".repeat(65)))),
            ("team NUL", Box::new(|c| c.teams = Some(vec!["t\0".into()]))),
            (
                "inbox NUL",
                Box::new(|c| c.inboxes = Some(vec!["i\0".into()])),
            ),
            (
                "inbox empty",
                Box::new(|c| c.inboxes = Some(vec![String::new()])),
            ),
            (
                "inboxes many",
                Box::new(|c| c.inboxes = Some(vec!["i".into(); 501])),
            ),
        ];
        for (what, spoil) in bad {
            let mut claims = claims(Role::Agent);
            spoil(&mut claims);
            assert!(verify(&claims).is_err(), "{what} was accepted");
        }
        // At the limits, and with letters of any script, they are fine.
        let mut fine = claims(Role::Agent);
        fine.sub = "ü".repeat(128);
        fine.name = Some("Zoë Ñ 李".into());
        fine.handle = Some("h".repeat(64));
        fine.teams = Some(vec!["tier2".into()]);
        fine.inboxes = Some(vec!["i".into(); 500]);
        verify(&fine).expect("within every limit");
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        #[derive(Serialize)]
        struct WithNbf {
            #[serde(flatten)]
            claims: Claims,
            nbf: u64,
        }
        let keys = Keys::new(b"secret");
        let mint = |nbf: u64| {
            let with = WithNbf {
                claims: claims(Role::Agent),
                nbf,
            };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &with, &keys.encoding)
                .expect("mint")
        };
        assert!(keys
            .verify(&mint(expiry_after(Duration::from_secs(3600))))
            .is_err());
        keys.verify(&mint(1_000)).expect("valid since long ago");
    }

    #[test]
    fn secret_is_generated_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, path) = load_or_create_secret(None, dir.path()).expect("create");
        let (b, _) = load_or_create_secret(None, dir.path()).expect("load");
        assert_eq!(a, b);
        assert!(path.expect("path").exists());
    }
}
