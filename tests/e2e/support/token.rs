//! Token minting: well-formed HS256 tokens for every role, and the malformed ones the
//! server must refuse (built by hand where `jsonwebtoken` would not build them).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The secret every test server (in-process or spawned) is started with.
pub const SECRET: &str = "e2e-secret-do-not-use-in-production-4f1c";

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims for `role`/`sub` that expire in an hour.
pub fn claims(role: &str, sub: &str) -> Value {
    json!({ "sub": sub, "role": role, "exp": now() + 3600 })
}

/// HS256 with the test secret.
pub fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, SECRET.as_bytes(), claims)
}

pub fn sign_with(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
        .expect("encode token")
}

/// `alg: none`, no signature.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// A validly signed token whose payload was swapped for `claims` afterwards.
pub fn tampered(claims_signed: &Value, claims_presented: &Value) -> String {
    let good = sign(claims_signed);
    let mut parts = good.split('.');
    let header = parts.next().unwrap();
    let _payload = parts.next().unwrap();
    let signature = parts.next().unwrap();
    format!(
        "{header}.{}.{signature}",
        b64url(claims_presented.to_string().as_bytes())
    )
}

pub fn customer(sub: &str) -> String {
    let mut c = claims("customer", sub);
    c["name"] = json!(format!("Customer {sub}"));
    sign(&c)
}

/// An agent working in the `support` inbox.
pub fn agent(sub: &str) -> String {
    agent_in(sub, &["support"])
}

pub fn agent_in(sub: &str, inboxes: &[&str]) -> String {
    let mut c = claims("agent", sub);
    c["name"] = json!(format!("Agent {sub}"));
    c["inboxes"] = json!(inboxes);
    sign(&c)
}

pub fn supervisor(sub: &str) -> String {
    let mut c = claims("supervisor", sub);
    c["name"] = json!(format!("Supervisor {sub}"));
    sign(&c)
}

/// A supervisor of some inboxes only.
pub fn supervisor_in(sub: &str, inboxes: &[&str]) -> String {
    let mut c = claims("supervisor", sub);
    c["name"] = json!(format!("Supervisor {sub}"));
    c["inboxes"] = json!(inboxes);
    sign(&c)
}

pub fn admin(sub: &str) -> String {
    let mut c = claims("admin", sub);
    c["name"] = json!(format!("Admin {sub}"));
    sign(&c)
}

/// Every way a token can be wrong that the contract says is refused, with a label.
/// Each is otherwise a perfectly good agent token for the `support` inbox.
pub fn refused_tokens() -> Vec<(&'static str, String)> {
    let good = || {
        let mut c = claims("agent", "mallory");
        c["inboxes"] = json!(["support"]);
        c
    };
    let mut no_exp = good();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut expired = good();
    expired["exp"] = json!(now() - 120);
    let mut bad_role = good();
    bad_role["role"] = json!("superuser");
    let mut empty_sub = good();
    empty_sub["sub"] = json!("");
    let mut long_sub = good();
    long_sub["sub"] = json!("x".repeat(129));
    let mut escalated = good();
    escalated["role"] = json!("admin");
    vec![
        ("alg none", unsigned(&good())),
        (
            "HS384",
            sign_with(Algorithm::HS384, SECRET.as_bytes(), &good()),
        ),
        (
            "HS512",
            sign_with(Algorithm::HS512, SECRET.as_bytes(), &good()),
        ),
        (
            "signed with another secret",
            sign_with(Algorithm::HS256, b"not-the-secret", &good()),
        ),
        (
            "payload swapped after signing",
            tampered(&good(), &escalated),
        ),
        ("missing exp", sign(&no_exp)),
        ("expired two minutes ago", sign(&expired)),
        ("unknown role", sign(&bad_role)),
        ("empty sub", sign(&empty_sub)),
        ("sub of 129 characters", sign(&long_sub)),
        ("not a JWT", "not-a-jwt".to_owned()),
        ("empty string", String::new()),
    ]
}

/// Base64url without padding, as JWTs use.
pub fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len() * 4 / 3 + 4);
    for chunk in data.chunks(3) {
        let b0 = chunk[0] as u32;
        let b1 = chunk.get(1).copied().unwrap_or(0) as u32;
        let b2 = chunk.get(2).copied().unwrap_or(0) as u32;
        let n = (b0 << 16) | (b1 << 8) | b2;
        for i in 0..chunk.len() + 1 {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn b64url_matches_known_vectors() {
    assert_eq!(b64url(b""), "");
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"fo"), "Zm8");
    assert_eq!(b64url(b"foo"), "Zm9v");
    assert_eq!(b64url(b"foob"), "Zm9vYg");
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}
