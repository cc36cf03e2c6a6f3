//! Who is on the other end of a socket: JWT verification, and minting development tokens.
//!
//! The algorithm is pinned by configuration (HS256 with a shared secret for development,
//! RS256 or EdDSA public keys for production); a token signed any other way, `alg: none`,
//! expired, or with the wrong issuer or audience is refused before any socket exists.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use natter_schemas::ids::check_id;
use serde::{Deserialize, Serialize};

/// The HS256 secret of a local setup (`--dev`): anyone can mint tokens with it.
pub const DEV_JWT_SECRET: &str = "natter-dev-secret-do-not-use-in-production";

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("invalid token: {0}")]
    BadIdentity(#[from] natter_schemas::IdError),
    #[error("unsupported algorithm {0}: use HS256, RS256 or EdDSA")]
    UnsupportedAlgorithm(String),
    #[error("a token may live at most {MAX_TOKEN_TTL_SECS} s (asked for {0} s)")]
    Lifetime(u64),
}

/// Longest lifetime of a token minted here (30 days): a leaked token stops working.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// The claims Natter reads. `exp` is required; `device` optionally names the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// `aud` is one string or a list of them (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub device: Option<String>,
    /// The token's `exp`: seconds since the epoch after which it no longer vouches for the
    /// user (a socket opened with it is closed then).
    pub expires_at: u64,
}

/// Checks tokens with one pinned algorithm and key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

impl Verifier {
    /// HS256 with a shared secret (development).
    pub fn hs256(
        secret: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, AuthError> {
        Ok(Self::new(
            DecodingKey::from_secret(secret)?,
            Algorithm::HS256,
            issuer,
            audience,
        ))
    }

    /// RS256 or EdDSA with a PEM public key (production).
    pub fn public_key(
        algorithm: &str,
        pem: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, AuthError> {
        let (key, alg) = match algorithm {
            "RS256" => (DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256),
            "EdDSA" => (DecodingKey::from_ed_pem(pem)?, Algorithm::EdDSA),
            other => return Err(AuthError::UnsupportedAlgorithm(other.to_owned())),
        };
        Ok(Self::new(key, alg, issuer, audience))
    }

    fn new(key: DecodingKey, alg: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = 30;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self { key, validation }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        check_id(&data.claims.sub, "user id")?;
        if let Some(device) = &data.claims.device {
            check_id(device, "device id")?;
        }
        Ok(Identity {
            user: data.claims.sub,
            device: data.claims.device,
            expires_at: data.claims.exp,
        })
    }
}

/// Mints an HS256 development token for `user`, valid for `ttl_secs`.
pub fn mint_hs256(
    secret: &[u8],
    user: &str,
    device: Option<&str>,
    ttl_secs: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, AuthError> {
    check_id(user, "user id")?;
    if let Some(device) = device {
        check_id(device, "device id")?;
    }
    if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL_SECS {
        return Err(AuthError::Lifetime(ttl_secs));
    }
    let claims = Claims {
        sub: user.to_owned(),
        exp: now_millis() / 1000 + ttl_secs,
        device: device.map(str::to_owned),
        iss: issuer.map(str::to_owned),
        aud: audience.map(|aud| Audience::One(aud.to_owned())),
    };
    sign_hs256(secret, &claims)
}

/// Signs `claims` as they are (no checks): for tools and tests.
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    let key = EncodingKey::from_secret(secret)?;
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims(exp_offset: i64) -> Claims {
        let now = (now_millis() / 1000) as i64;
        Claims {
            sub: "alice".into(),
            exp: (now + exp_offset) as u64,
            device: Some("phone".into()),
            iss: None,
            aud: None,
        }
    }

    fn sign(alg: Algorithm, claims: &Claims, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    /// base64url without padding, to forge an `alg: none` token by hand.
    fn base64url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_good_token_yields_its_user_and_device() {
        let v = Verifier::hs256(SECRET, None, None).unwrap();
        let claims = claims(60);
        let id = v.verify(&sign(Algorithm::HS256, &claims, SECRET)).unwrap();
        assert_eq!(
            id,
            Identity {
                user: "alice".into(),
                device: Some("phone".into()),
                expires_at: claims.exp,
            }
        );
        let minted = mint_hs256(SECRET, "bob", None, 60, None, None).unwrap();
        assert_eq!(v.verify(&minted).unwrap().user, "bob");
        for ttl in [0, MAX_TOKEN_TTL_SECS + 1] {
            assert!(matches!(
                mint_hs256(SECRET, "bob", None, ttl, None, None),
                Err(AuthError::Lifetime(_))
            ));
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let v = Verifier::hs256(SECRET, None, None).unwrap();
        let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64url(serde_json::to_string(&claims(60)).unwrap().as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(v.verify(&token).is_err(), "{token} must be refused");
        }
    }

    #[test]
    fn wrong_key_wrong_algorithm_and_expiry_are_refused() {
        let v = Verifier::hs256(SECRET, None, None).unwrap();
        assert!(
            v.verify(&sign(Algorithm::HS256, &claims(60), b"other"))
                .is_err()
        );
        assert!(
            v.verify(&sign(Algorithm::HS512, &claims(60), SECRET))
                .is_err()
        );
        assert!(
            v.verify(&sign(Algorithm::HS256, &claims(-120), SECRET))
                .is_err()
        );
        assert!(v.verify("not.a.token").is_err());
    }

    #[test]
    fn exp_is_required() {
        #[derive(Serialize)]
        struct NoExp {
            sub: &'static str,
        }
        let v = Verifier::hs256(SECRET, None, None).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp { sub: "alice" },
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert!(v.verify(&token).is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let v = Verifier::hs256(SECRET, Some("natter"), Some("chat")).unwrap();
        let good = mint_hs256(SECRET, "alice", None, 60, Some("natter"), Some("chat")).unwrap();
        assert!(v.verify(&good).is_ok());
        for (iss, aud) in [
            (Some("evil"), Some("chat")),
            (Some("natter"), Some("other")),
            (None, Some("chat")),
            (Some("natter"), None),
        ] {
            let token = mint_hs256(SECRET, "alice", None, 60, iss, aud).unwrap();
            assert!(
                v.verify(&token).is_err(),
                "iss {iss:?} aud {aud:?} must be refused"
            );
        }
    }

    #[test]
    fn a_list_audience_is_accepted_when_it_names_us_and_nbf_is_honoured() {
        let v = Verifier::hs256(SECRET, None, Some("chat")).unwrap();
        let mut c = claims(60);
        c.aud = Some(Audience::Many(vec!["other".into(), "chat".into()]));
        assert!(v.verify(&sign(Algorithm::HS256, &c, SECRET)).is_ok());
        c.aud = Some(Audience::Many(vec!["other".into()]));
        assert!(v.verify(&sign(Algorithm::HS256, &c, SECRET)).is_err());

        #[derive(Serialize)]
        struct NotYet {
            sub: &'static str,
            exp: u64,
            nbf: u64,
        }
        let v = Verifier::hs256(SECRET, None, None).unwrap();
        let now = now_millis() / 1000;
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NotYet {
                sub: "alice",
                exp: now + 600,
                nbf: now + 300,
            },
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert!(
            v.verify(&token).is_err(),
            "a token not valid before 5 minutes from now"
        );
    }

    #[test]
    fn a_subject_outside_the_id_rules_is_refused() {
        let v = Verifier::hs256(SECRET, None, None).unwrap();
        let mut c = claims(60);
        c.sub = "alice.>".into();
        assert!(matches!(
            v.verify(&sign(Algorithm::HS256, &c, SECRET)),
            Err(AuthError::BadIdentity(_))
        ));
    }
}
