//! Signing and verifying access tokens (JWT). The hub signs with its HS256 secret (the
//! patient tokens it hands out at intake, and development tokens) and also accepts tokens an
//! identity provider signed with an Ed25519 or RSA key whose public half it was given.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};

use super::Claims;
use crate::error::{ErrorCode, HubError};

/// Audience every token must name.
pub const AUDIENCE: &str = "visithub";
/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;

pub struct TokenKeys {
    encoding: EncodingKey,
    hs256: DecodingKey,
    public: Vec<(Algorithm, DecodingKey)>,
}

impl TokenKeys {
    pub fn new(hs256_secret: &[u8]) -> anyhow::Result<TokenKeys> {
        anyhow::ensure!(hs256_secret.len() >= 32, "the signing secret must be at least 32 bytes");
        Ok(TokenKeys {
            encoding: EncodingKey::from_secret(hs256_secret)?,
            hs256: DecodingKey::from_secret(hs256_secret)?,
            public: Vec::new(),
        })
    }

    /// Also accept tokens signed by the private half of this PEM public key (Ed25519 or RSA).
    pub fn accept_public_key_pem(&mut self, pem: &[u8]) -> anyhow::Result<()> {
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            self.public.push((Algorithm::EdDSA, key));
        } else {
            let key = DecodingKey::from_rsa_pem(pem)
                .map_err(|e| anyhow::anyhow!("public key is neither Ed25519 nor RSA PEM: {e}"))?;
            for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
                self.public.push((alg, key.clone()));
            }
        }
        Ok(())
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Checks signature, audience and expiry; a wrong signature and a malformed token are
    /// both `token_invalid` (the client learns nothing about which).
    pub fn verify(&self, token: &str) -> Result<Claims, HubError> {
        let invalid = || HubError::code(ErrorCode::TokenInvalid);
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = if header.alg == Algorithm::HS256 {
            &self.hs256
        } else {
            &self.public.iter().find(|(alg, _)| *alg == header.alg).ok_or_else(invalid)?.1
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        jsonwebtoken::decode::<Claims>(token, key, &validation).map(|d| d.claims).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => HubError::code(ErrorCode::TokenExpired),
            _ => invalid(),
        })
    }
}
