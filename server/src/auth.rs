//! Who is asking: tokens signed by the chat host (JWT, EdDSA over Ed25519), bound to a device.
//!
//! The chat host signs in its members (password, biometrics, PIN) and hands each device a
//! short-lived token; the server holds only the host's public key. A member token names the
//! user (`sub`), the device it was issued to (`dev`: the SHA-256 of the device's id, in hex),
//! how and when the member authenticated (`amr`, `auth_time`), and the orgs they administer
//! (`adm`). Every member request carries the token (`Authorization: Bearer …`) and the
//! device's id (`X-Device-Id`), which the device keeps to itself: a token lifted from one
//! device is refused on another, and reading the token does not tell what the header must say. A host token (`role: "host"`) is the chat server's own
//! credential for money entering and leaving (deposits, withdrawals), rosters and orgs.
//!
//! `hongbao keygen` and `hongbao token` make keys and tokens for development and tests; in
//! production the chat host mints tokens with its own JWT library and private key.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::SigningKey;
use hongbao::{OrgId, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The audience every token must name: a token the host minted for another service is not
/// accepted here.
pub const AUDIENCE: &str = "hongbao";

/// The header carrying the device's id.
pub const DEVICE_HEADER: &str = "X-Device-Id";

/// Authentication methods strong enough for a large send (RFC 8176 names).
pub const STRONG_METHODS: [&str; 2] = ["bio", "pin"];

/// Whose token it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A member, on one device.
    #[default]
    Member,
    /// The chat host's server.
    Host,
}

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, in decimal (JWT subjects are strings).
    pub sub: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// The device the token is bound to (member tokens): [`device_hash`] of its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// How the member authenticated: `pwd`, `bio`, `pin`, `otp`…
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// When, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// The orgs whose admin routes the member may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adm: Vec<u64>,
    /// Member or host.
    #[serde(default)]
    pub role: Role,
}

impl Claims {
    /// A member's claims: `user` on `device`, signed in with `amr` just now, valid for
    /// `ttl_secs`.
    pub fn member(user: UserId, device: &str, amr: &[&str], ttl_secs: u64) -> Claims {
        let now = unix_now();
        Claims {
            sub: user.0.to_string(),
            aud: AUDIENCE.into(),
            exp: now + ttl_secs,
            iat: now,
            dev: Some(device_hash(device)),
            amr: amr.iter().map(|m| m.to_string()).collect(),
            auth_time: Some(now),
            adm: Vec::new(),
            role: Role::Member,
        }
    }

    /// The chat host's credential, valid for `ttl_secs`.
    pub fn host(ttl_secs: u64) -> Claims {
        let now = unix_now();
        Claims {
            sub: "0".into(),
            aud: AUDIENCE.into(),
            exp: now + ttl_secs,
            iat: now,
            dev: None,
            amr: Vec::new(),
            auth_time: None,
            adm: Vec::new(),
            role: Role::Host,
        }
    }
}

/// A member, as their verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Who.
    pub user: UserId,
    /// On which device: the SHA-256 of its id.
    pub device_digest: [u8; 32],
    /// How they authenticated.
    pub amr: Vec<String>,
    /// When.
    pub auth_time: Option<u64>,
    /// The orgs they may administer.
    pub admin_of: Vec<OrgId>,
    /// When the token expires (seconds since the Unix epoch).
    pub expires_at: u64,
}

impl Member {
    /// Whether the member authenticated strongly (biometrics or PIN) within `secs` of `now`.
    pub fn stepped_up(&self, now: u64, secs: u64) -> bool {
        let strong = self.amr.iter().any(|m| STRONG_METHODS.contains(&m.as_str()));
        strong && self.auth_time.is_some_and(|at| at <= now + 60 && now.saturating_sub(at) <= secs)
    }

    /// Whether the token carries an admin claim for `org`.
    pub fn administers(&self, org: OrgId) -> bool {
        self.admin_of.contains(&org)
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A member on their device (shared with the verified-token cache).
    Member(Arc<Member>),
    /// The chat host.
    Host,
}

/// Why a token was refused (each a 401, except `NotAllowed`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    MissingToken,
    /// Not a JWT, or claims that do not parse.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Not signed by the host's key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
    /// Minted for another service.
    #[error("the token is not for this service")]
    WrongAudience,
    /// A member token without a device, or a request without the device header.
    #[error("no device id")]
    MissingDevice,
    /// The request came from another device than the token's.
    #[error("the token is bound to another device")]
    WrongDevice,
}

impl AuthError {
    /// The `reason` field of the JSON error.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingDevice => "missing_device",
            AuthError::WrongDevice => "wrong_device",
        }
    }
}

/// Checks tokens against the host's public key.
///
/// A signature check costs tens of microseconds, more than a grab: tokens already verified
/// are remembered (by a BLAKE3 hash of the whole token) with their claims until they expire,
/// so a member's every later request costs a hash and a lookup. The memory is bounded: at
/// `cache_len` tokens, expired ones are dropped, then as many others as bring it to three
/// quarters.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    verified: dashmap::DashMap<[u8; 32], Verified>,
    cache_len: usize,
    /// Counts lookups: a token's last use, for eviction.
    clock: std::sync::atomic::AtomicU64,
}

/// A token whose signature verified: whom it names, until when, and when it was last used.
#[derive(Debug)]
struct Verified {
    exp: u64,
    who: Principal,
    used: std::sync::atomic::AtomicU64,
}

impl Verifier {
    /// A verifier for tokens signed by the key whose public half is `public_pem`.
    pub fn new(public_pem: &[u8], leeway_secs: u64) -> Result<Verifier, String> {
        Verifier::with_cache(public_pem, leeway_secs, 262_144)
    }

    /// As [`Verifier::new`], remembering at most `cache_len` verified tokens.
    pub fn with_cache(public_pem: &[u8], leeway_secs: u64, cache_len: usize) -> Result<Verifier, String> {
        let key = DecodingKey::from_ed_pem(public_pem).map_err(|e| format!("not an Ed25519 public key (PEM): {e}"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = leeway_secs;
        let (verified, clock) = (dashmap::DashMap::new(), std::sync::atomic::AtomicU64::new(0));
        Ok(Verifier { key, validation, verified, cache_len, clock })
    }

    /// Whom `token` names, from the cache when it was verified before and has not expired.
    fn verified(&self, token: &str) -> Result<Principal, AuthError> {
        let digest = *blake3::hash(token.as_bytes()).as_bytes();
        let now = unix_now();
        let tick = self.clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(hit) = self.verified.get(&digest) {
            if hit.exp.saturating_add(self.validation.leeway) > now {
                hit.used.store(tick, std::sync::atomic::Ordering::Relaxed);
                return Ok(hit.who.clone());
            }
            drop(hit);
            self.verified.remove(&digest);
            return Err(AuthError::Expired);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                _ => AuthError::Malformed(e.to_string()),
            })?
            .claims;
        let who = match claims.role {
            Role::Host => Principal::Host,
            Role::Member => {
                let user = claims.sub.parse().map_err(|_| AuthError::Malformed("sub is not a user id".into()))?;
                Principal::Member(Arc::new(Member {
                    user: UserId(user),
                    device_digest: claims.dev.as_deref().map(parse_digest).ok_or(AuthError::MissingDevice)??,
                    amr: claims.amr,
                    auth_time: claims.auth_time,
                    admin_of: claims.adm.into_iter().map(OrgId).collect(),
                    expires_at: claims.exp,
                }))
            }
        };
        if self.cache_len > 0 {
            if self.verified.len() >= self.cache_len {
                // Expired tokens go first; then the least recently used, down to three
                // quarters (dropping them all would make every member's next request pay a
                // signature check at once). Linear, once per quarter of the cache inserted.
                self.verified.retain(|_, v| v.exp.saturating_add(self.validation.leeway) > now);
                let excess = self.verified.len().saturating_sub(self.cache_len * 3 / 4);
                if excess > 0 {
                    let mut by_use: Vec<(u64, [u8; 32])> = self
                        .verified
                        .iter()
                        .map(|e| (e.used.load(std::sync::atomic::Ordering::Relaxed), *e.key()))
                        .collect();
                    by_use.select_nth_unstable(excess - 1);
                    by_use[..excess].iter().for_each(|(_, k)| drop(self.verified.remove(k)));
                }
            }
            let used = std::sync::atomic::AtomicU64::new(tick);
            self.verified.insert(digest, Verified { exp: claims.exp, who: who.clone(), used });
        }
        Ok(who)
    }

    /// Who `token` (from `Authorization: Bearer`) says is asking, given the device the request
    /// came with.
    pub fn verify(&self, token: &str, device: Option<&str>) -> Result<Principal, AuthError> {
        match self.verified(token)? {
            Principal::Member(member) => match device {
                None => Err(AuthError::MissingDevice),
                Some(device) if device_digest(device) != member.device_digest => Err(AuthError::WrongDevice),
                Some(_) => Ok(Principal::Member(member)),
            },
            host => Ok(host),
        }
    }
}

/// What a token's `dev` claim holds for the device whose id is `device`: the SHA-256 of the
/// id, in lowercase hex.
pub fn device_hash(device: &str) -> String {
    device_digest(device).iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a device's id (compared on every request: no text is formatted).
fn device_digest(device: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(device.as_bytes()).into()
}

/// A `dev` claim back into the digest it spells.
fn parse_digest(hex: &str) -> Result<[u8; 32], AuthError> {
    let malformed = || AuthError::Malformed("dev is not 64 hex digits (the SHA-256 of the device id)".into());
    if hex.len() != 64 {
        return Err(malformed());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(malformed)?, 16).map_err(|_| malformed())?;
    }
    Ok(digest)
}

/// Signs `claims` with the host's private key (PKCS#8 PEM).
pub fn mint(private_pem: &[u8], claims: &Claims) -> Result<String, String> {
    let key = EncodingKey::from_ed_pem(private_pem).map_err(|e| format!("not an Ed25519 private key (PEM): {e}"))?;
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).map_err(|e| e.to_string())
}

/// A new Ed25519 key pair, as (private PKCS#8 PEM, public SPKI PEM).
pub fn keygen() -> (String, String) {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the operating system provides randomness");
    let key = SigningKey::from_bytes(&seed);
    let private = key.to_pkcs8_pem(LineEnding::LF).expect("an Ed25519 key encodes").to_string();
    let public = key.verifying_key().to_public_key_pem(LineEnding::LF).expect("an Ed25519 key encodes");
    (private, public)
}

/// Seconds since the Unix epoch, as tokens count time.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_with_its_key_and_device() {
        let (private, public) = keygen();
        let (_, other_public) = keygen();
        let verifier = Verifier::with_cache(public.as_bytes(), 0, 2).unwrap();
        let token = mint(private.as_bytes(), &Claims::member(UserId(7), "phone-1", &["pwd"], 60)).unwrap();
        let Principal::Member(member) = verifier.verify(&token, Some("phone-1")).unwrap() else { panic!("a member") };
        assert_eq!((member.user, member.device_digest), (UserId(7), device_digest("phone-1")));
        assert_eq!(parse_digest(&device_hash("phone-1")), Ok(device_digest("phone-1")));
        assert!(!token.contains("phone-1"), "the token does not carry the device id");
        assert_eq!(verifier.verify(&token, Some("phone-2")), Err(AuthError::WrongDevice));
        assert_eq!(verifier.verify(&token, None), Err(AuthError::MissingDevice));
        let stranger = Verifier::new(other_public.as_bytes(), 0).unwrap();
        assert_eq!(stranger.verify(&token, Some("phone-1")), Err(AuthError::BadSignature));

        let mut old = Claims::member(UserId(7), "phone-1", &["pwd"], 0);
        old.exp -= 120;
        let expired = mint(private.as_bytes(), &old).unwrap();
        assert_eq!(verifier.verify(&expired, Some("phone-1")), Err(AuthError::Expired));
        assert!(matches!(verifier.verify("not.a.token", Some("phone-1")), Err(AuthError::Malformed(_))));

        // The cache is bounded, and answers as the signature check does.
        for user in 1..=5 {
            let token = mint(private.as_bytes(), &Claims::member(UserId(user), "d", &["pwd"], 60)).unwrap();
            for _ in 0..2 {
                assert!(
                    matches!(verifier.verify(&token, Some("d")), Ok(Principal::Member(m)) if m.user == UserId(user))
                );
            }
            assert!(verifier.verified.len() <= 2);
        }
        assert_eq!(verifier.verify(&token, Some("phone-2")), Err(AuthError::WrongDevice), "cached or not");

        // A full cache drops the least recently used: a member in use keeps their entry.
        let verifier = Verifier::with_cache(public.as_bytes(), 0, 4).unwrap();
        let tokens: Vec<String> = (1..=8)
            .map(|user| mint(private.as_bytes(), &Claims::member(UserId(user), "d", &["pwd"], 60)).unwrap())
            .collect();
        for token in &tokens {
            verifier.verify(&tokens[0], Some("d")).unwrap();
            verifier.verify(token, Some("d")).unwrap();
        }
        let first = *blake3::hash(tokens[0].as_bytes()).as_bytes();
        assert!(verifier.verified.contains_key(&first), "the token used all along is still cached");
        assert!(verifier.verified.len() <= 4);
    }

    #[test]
    fn step_up_needs_a_strong_method_within_the_window() {
        let member = |amr: &[&str], at: u64| Member {
            user: UserId(1),
            device_digest: device_digest("d"),
            amr: amr.iter().map(|m| m.to_string()).collect(),
            auth_time: Some(at),
            admin_of: Vec::new(),
            expires_at: u64::MAX,
        };
        assert!(member(&["pwd", "bio"], 1_000).stepped_up(1_200, 300));
        assert!(!member(&["pwd"], 1_000).stepped_up(1_000, 300), "a password is not strong");
        assert!(!member(&["pin"], 1_000).stepped_up(1_301, 300), "too long ago");
    }
}
