//! Verifying a signed JWT (JWS compact form) against the provider's key set: what the
//! back-channel logout token needs, and later access tokens.
//!
//! openidconnect verifies ID tokens itself but has no entry point for other JWTs, so the
//! steps are here, each one a refusal of its own: three base64url parts; a header naming an
//! algorithm from [`ALLOWED`] (asymmetric only: never `none`, never an HMAC, whose "key"
//! would be the provider's public key that anyone can fetch) and no `crit` extensions; the
//! key picked by `kid` from the key set, asked for anew once when the `kid` is unknown (a
//! rotated key); the signature checked by [`signature_verifies`]: RSA and ECDSA with the
//! system's OpenSSL (a cold access-token login is mostly this check, and OpenSSL's is
//! several times faster than the pure-Rust one), EdDSA with openidconnect's
//! [`JsonWebKey::verify_signature`]; either way a key of another type, curve, use or
//! algorithm is refused. The claims come back as a JSON map: what they must say is the
//! caller's business.

use async_trait::async_trait;
use base64::Engine;
use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
use openidconnect::JsonWebKey;
use serde_json::{Map, Value};
use thiserror::Error;

use super::fetch::FetchError;

/// The signature algorithms accepted: the asymmetric ones openidconnect can verify.
pub const ALLOWED: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Tokens longer than this are not read at all.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a signed JWT: {0}")]
    Malformed(&'static str),
    #[error("the JWT's alg {0:?} is not an allowed asymmetric signature algorithm")]
    Algorithm(String),
    #[error("the JWT header has critical extensions this verifier does not know")]
    Critical,
    #[error("no key of the provider has the JWT's kid {0:?}")]
    UnknownKey(String),
    #[error("the JWT's signature does not verify with the provider's keys")]
    BadSignature,
    #[error("the provider's keys cannot be fetched: {0}")]
    Keys(FetchError),
}

/// Where the keys come from: the relying party's copy of the provider's key set.
#[async_trait]
pub trait KeySource: Send + Sync {
    /// The key set; `refetch` asks for a fresh copy (a source may rate-limit it and answer
    /// with the copy it has).
    async fn keys(&self, refetch: bool) -> Result<Vec<CoreJsonWebKey>, FetchError>;
}

/// A JWT whose header has been read and whose signature is not checked yet.
#[derive(Debug)]
pub struct Unverified {
    pub alg: CoreJwsSigningAlgorithm,
    pub kid: Option<String>,
    signing_input: String,
    signature: Vec<u8>,
    payload: Vec<u8>,
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("a part is not base64url"))
}

/// Reads the header: the form, the algorithm, no critical extensions.
pub fn parse(token: &str) -> Result<Unverified, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed("too long"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let header: Map<String, Value> = serde_json::from_slice(&b64(header)?)
        .map_err(|_| JwtError::Malformed("the header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(JwtError::Malformed("the header has no alg")),
    };
    let parsed: Option<CoreJwsSigningAlgorithm> =
        serde_json::from_value(Value::String(alg.clone())).ok();
    let Some(alg) = parsed.filter(|a| ALLOWED.contains(a)) else {
        return Err(JwtError::Algorithm(alg));
    };
    if header.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed("kid is not a string")),
    };
    let signature = b64(signature)?;
    if signature.is_empty() {
        return Err(JwtError::Malformed("no signature"));
    }
    Ok(Unverified {
        alg,
        kid,
        signing_input: token[..token.len() - parts[2].len() - 1].to_string(),
        payload: b64(payload)?,
        signature,
    })
}

impl Unverified {
    /// Checks the signature with `keys`: the keys with the token's `kid`, or every key
    /// when it names none. `UnknownKey` when no key has that `kid`.
    pub fn verify(&self, keys: &[CoreJsonWebKey]) -> Result<Map<String, Value>, JwtError> {
        let candidates: Vec<&CoreJsonWebKey> = match &self.kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
                .collect(),
            None => keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey(self.kid.clone().unwrap_or_default()));
        }
        let message = self.signing_input.as_bytes();
        let verified = candidates
            .iter()
            .any(|k| signature_verifies(k, &self.alg, message, &self.signature));
        if !verified {
            return Err(JwtError::BadSignature);
        }
        serde_json::from_slice(&self.payload)
            .map_err(|_| JwtError::Malformed("the claims are not a JSON object"))
    }
}

/// Whether `signature` over `message` verifies with `key` for `alg`. The key must be of
/// the algorithm's type (and curve), and its `use` and `alg`, when it names them, must
/// be `sig` and `alg`.
fn signature_verifies(
    key: &CoreJsonWebKey,
    alg: &CoreJwsSigningAlgorithm,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use CoreJwsSigningAlgorithm as A;
    let Ok(Value::Object(jwk)) = serde_json::to_value(key) else {
        return false;
    };
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let alg_name = serde_json::to_value(alg).ok();
    if text("use").is_some_and(|u| u != "sig")
        || jwk.get("alg").is_some_and(|a| Some(a) != alg_name.as_ref())
    {
        return false;
    }
    let bytes = |name: &str| text(name).and_then(|v| b64(v).ok());
    match alg {
        A::RsaSsaPkcs1V15Sha256 | A::RsaSsaPkcs1V15Sha384 | A::RsaSsaPkcs1V15Sha512 => {
            text("kty") == Some("RSA")
                && rsa_verifies(bytes("n"), bytes("e"), alg, false, message, signature)
        }
        A::RsaSsaPssSha256 | A::RsaSsaPssSha384 | A::RsaSsaPssSha512 => {
            text("kty") == Some("RSA")
                && rsa_verifies(bytes("n"), bytes("e"), alg, true, message, signature)
        }
        A::EcdsaP256Sha256 | A::EcdsaP384Sha384 => {
            let (curve, nid, size) = match alg {
                A::EcdsaP256Sha256 => ("P-256", openssl::nid::Nid::X9_62_PRIME256V1, 32),
                _ => ("P-384", openssl::nid::Nid::SECP384R1, 48),
            };
            text("kty") == Some("EC")
                && text("crv") == Some(curve)
                && ec_verifies(bytes("x"), bytes("y"), nid, size, alg, message, signature)
        }
        _ => key.verify_signature(alg, message, signature).is_ok(),
    }
}

fn digest_of(alg: &CoreJwsSigningAlgorithm) -> openssl::hash::MessageDigest {
    use openssl::hash::MessageDigest;
    use CoreJwsSigningAlgorithm as A;
    match alg {
        A::RsaSsaPkcs1V15Sha384 | A::RsaSsaPssSha384 | A::EcdsaP384Sha384 => {
            MessageDigest::sha384()
        }
        A::RsaSsaPkcs1V15Sha512 | A::RsaSsaPssSha512 => MessageDigest::sha512(),
        _ => MessageDigest::sha256(),
    }
}

fn rsa_verifies(
    n: Option<Vec<u8>>,
    e: Option<Vec<u8>>,
    alg: &CoreJwsSigningAlgorithm,
    pss: bool,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use openssl::bn::BigNum;
    use openssl::pkey::PKey;
    use openssl::rsa::{Padding, Rsa};
    use openssl::sign::{RsaPssSaltlen, Verifier};
    let (Some(n), Some(e)) = (n, e) else {
        return false;
    };
    let check = || -> Result<bool, openssl::error::ErrorStack> {
        let rsa = Rsa::from_public_components(BigNum::from_slice(&n)?, BigNum::from_slice(&e)?)?;
        let key = PKey::from_rsa(rsa)?;
        let digest = digest_of(alg);
        let mut verifier = Verifier::new(digest, &key)?;
        if pss {
            // RFC 7518 section 3.5: MGF1 with the same hash, a salt as long as the hash.
            verifier.set_rsa_padding(Padding::PKCS1_PSS)?;
            verifier.set_rsa_mgf1_md(digest)?;
            verifier.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        }
        verifier.verify_oneshot(signature, message)
    };
    check().unwrap_or(false)
}

fn ec_verifies(
    x: Option<Vec<u8>>,
    y: Option<Vec<u8>>,
    nid: openssl::nid::Nid,
    size: usize,
    alg: &CoreJwsSigningAlgorithm,
    message: &[u8],
    signature: &[u8],
) -> bool {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey, EcPoint};
    use openssl::ecdsa::EcdsaSig;
    let (Some(x), Some(y)) = (x, y) else {
        return false;
    };
    // A JWS ECDSA signature is r and s, each exactly the curve's size (RFC 7518 3.4).
    if signature.len() != 2 * size || x.len() != size || y.len() != size {
        return false;
    }
    let check = || -> Result<bool, openssl::error::ErrorStack> {
        let group = EcGroup::from_curve_name(nid)?;
        let mut ctx = BigNumContext::new()?;
        let mut point = EcPoint::new(&group)?;
        let (x, y) = (BigNum::from_slice(&x)?, BigNum::from_slice(&y)?);
        point.set_affine_coordinates_gfp(&group, &x, &y, &mut ctx)?;
        // Setting the coordinates refuses a point that is not on the curve (and both curves
        // have cofactor 1, so that is the whole check).
        let key = EcKey::from_public_key(&group, &point)?;
        let sig = EcdsaSig::from_private_components(
            BigNum::from_slice(&signature[..size])?,
            BigNum::from_slice(&signature[size..])?,
        )?;
        let digest = openssl::hash::hash(digest_of(alg), message)?;
        sig.verify(&digest, &key)
    };
    check().unwrap_or(false)
}

/// Parses and verifies `token` with the keys of `source`, fetching them anew once when its
/// `kid` is unknown.
pub async fn verify(token: &str, source: &dyn KeySource) -> Result<Map<String, Value>, JwtError> {
    let jwt = parse(token)?;
    let keys = source.keys(false).await.map_err(JwtError::Keys)?;
    match jwt.verify(&keys) {
        Err(JwtError::UnknownKey(_)) => {
            let keys = source.keys(true).await.map_err(JwtError::Keys)?;
            jwt.verify(&keys)
        }
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod test_keys {
    //! Keys and tokens the tests make and sign themselves.

    use base64::Engine;
    use openidconnect::core::{CoreJsonCurveType, CoreJsonWebKey};
    use openidconnect::JsonWebKeyId;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::ecdsa::EcdsaSig;
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Rsa;
    use openssl::sign::Signer;
    use serde_json::Value;

    pub fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub struct RsaTestKey {
        pub kid: String,
        pub key: PKey<Private>,
    }

    impl RsaTestKey {
        pub fn new(kid: &str) -> Self {
            let rsa = Rsa::generate(2048).unwrap();
            RsaTestKey {
                kid: kid.to_string(),
                key: PKey::from_rsa(rsa).unwrap(),
            }
        }

        pub fn public(&self) -> CoreJsonWebKey {
            let rsa = self.key.rsa().unwrap();
            CoreJsonWebKey::new_rsa(
                rsa.n().to_vec(),
                rsa.e().to_vec(),
                Some(JsonWebKeyId::new(self.kid.clone())),
            )
        }

        /// The public key as a JWK's JSON.
        pub fn public_json(&self) -> Value {
            serde_json::to_value(self.public()).unwrap()
        }

        /// An RS256 JWT of `claims`, with this key's kid.
        pub fn sign(&self, claims: &Value) -> String {
            let header = serde_json::json!({"alg": "RS256", "kid": self.kid, "typ": "logout+jwt"});
            self.sign_with_header(&header, claims)
        }

        pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let mut signer = Signer::new(MessageDigest::sha256(), &self.key).unwrap();
            signer.update(input.as_bytes()).unwrap();
            format!("{input}.{}", b64(&signer.sign_to_vec().unwrap()))
        }
    }

    /// A new EC key on `nid` (coordinates of `size` bytes) and its JWK.
    pub fn ec_key(
        nid: Nid,
        curve: CoreJsonCurveType,
        size: i32,
        kid: Option<&str>,
    ) -> (EcKey<Private>, CoreJsonWebKey) {
        let group = EcGroup::from_curve_name(nid).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let (mut x, mut y) = (
            openssl::bn::BigNum::new().unwrap(),
            openssl::bn::BigNum::new().unwrap(),
        );
        key.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        let jwk = CoreJsonWebKey::new_ec(
            x.to_vec_padded(size).unwrap(),
            y.to_vec_padded(size).unwrap(),
            curve,
            kid.map(|k| JsonWebKeyId::new(k.to_string())),
        );
        (key, jwk)
    }

    /// An ES256 key: the JWK and a token signed with it.
    pub fn es256(kid: &str, claims: &Value) -> (CoreJsonWebKey, String) {
        let (key, jwk) = ec_key(
            Nid::X9_62_PRIME256V1,
            CoreJsonCurveType::P256,
            32,
            Some(kid),
        );
        let header = serde_json::json!({"alg": "ES256", "kid": kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let digest = openssl::sha::sha256(input.as_bytes());
        let sig = EcdsaSig::sign(&digest, &key).unwrap();
        let mut raw = sig.r().to_vec_padded(32).unwrap();
        raw.extend(sig.s().to_vec_padded(32).unwrap());
        (jwk, format!("{input}.{}", b64(&raw)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use hmac::{Hmac, Mac};
    use serde_json::json;

    use super::test_keys::{b64, es256, RsaTestKey};
    use super::*;

    /// The signature check here (OpenSSL) against openidconnect's own, which it replaced
    /// for speed: both must agree on good, altered and misdirected signatures.
    #[test]
    fn openssl_and_openidconnect_agree_on_every_algorithm() {
        use openidconnect::core::CoreJsonCurveType;
        use openssl::ecdsa::EcdsaSig;
        use openssl::nid::Nid;
        use openssl::rsa::Padding;
        use openssl::sign::{RsaPssSaltlen, Signer};
        use CoreJwsSigningAlgorithm as A;

        let message = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";
        let agree = |key: &CoreJsonWebKey, alg: &A, msg: &[u8], sig: &[u8], want: bool| {
            assert_eq!(signature_verifies(key, alg, msg, sig), want, "{alg:?}");
            assert_eq!(
                key.verify_signature(alg, msg, sig).is_ok(),
                want,
                "openidconnect, {alg:?}"
            );
        };
        let rsa = RsaTestKey::new("r");
        for alg in [
            A::RsaSsaPkcs1V15Sha256,
            A::RsaSsaPkcs1V15Sha384,
            A::RsaSsaPkcs1V15Sha512,
            A::RsaSsaPssSha256,
            A::RsaSsaPssSha384,
            A::RsaSsaPssSha512,
        ] {
            let digest = digest_of(&alg);
            let mut signer = Signer::new(digest, &rsa.key).unwrap();
            if matches!(
                alg,
                A::RsaSsaPssSha256 | A::RsaSsaPssSha384 | A::RsaSsaPssSha512
            ) {
                signer.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
                signer.set_rsa_mgf1_md(digest).unwrap();
                signer
                    .set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
                    .unwrap();
            }
            let sig = signer.sign_oneshot_to_vec(message).unwrap();
            let key = rsa.public();
            agree(&key, &alg, message, &sig, true);
            let mut altered = sig.clone();
            altered[17] ^= 0x01;
            agree(&key, &alg, message, &altered, false);
            agree(&key, &alg, b"another.message", &sig, false);
            // The same signature checked as another algorithm of the family.
            let other = if alg == A::RsaSsaPkcs1V15Sha256 {
                A::RsaSsaPssSha256
            } else {
                A::RsaSsaPkcs1V15Sha256
            };
            agree(&key, &other, message, &sig, false);
        }
        for (alg, nid, crv, size) in [
            (
                A::EcdsaP256Sha256,
                Nid::X9_62_PRIME256V1,
                CoreJsonCurveType::P256,
                32,
            ),
            (
                A::EcdsaP384Sha384,
                Nid::SECP384R1,
                CoreJsonCurveType::P384,
                48,
            ),
        ] {
            let (ec, key) = super::test_keys::ec_key(nid, crv, size as i32, None);
            let digest = openssl::hash::hash(digest_of(&alg), message).unwrap();
            let sig = EcdsaSig::sign(&digest, &ec).unwrap();
            let mut raw = sig.r().to_vec_padded(size as i32).unwrap();
            raw.extend(sig.s().to_vec_padded(size as i32).unwrap());
            agree(&key, &alg, message, &raw, true);
            let mut altered = raw.clone();
            altered[size + 3] ^= 0x40;
            agree(&key, &alg, message, &altered, false);
            agree(&key, &alg, b"another.message", &raw, false);
            agree(&key, &alg, message, &sig.to_der().unwrap(), false);
            // An EC key never checks an RSA algorithm, nor an RSA key an ECDSA one.
            assert!(!signature_verifies(
                &key,
                &A::RsaSsaPkcs1V15Sha256,
                message,
                &raw
            ));
            assert!(!signature_verifies(&rsa.public(), &alg, message, &raw));
        }
        let wrong_curve =
            CoreJsonWebKey::new_ec(vec![1; 48], vec![2; 48], CoreJsonCurveType::P384, None);
        assert!(!signature_verifies(
            &wrong_curve,
            &A::EcdsaP256Sha256,
            message,
            &[0; 64]
        ));
    }

    /// A key meant for encryption, or for another algorithm, checks no signature.
    #[test]
    fn a_key_for_another_use_or_algorithm_is_not_used() {
        use openssl::sign::Signer;
        let rsa = RsaTestKey::new("r");
        let message = b"a.b";
        let mut signer = Signer::new(openssl::hash::MessageDigest::sha256(), &rsa.key).unwrap();
        let sig = signer.sign_oneshot_to_vec(message).unwrap();
        let alg = CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256;
        let mut jwk = rsa.public_json();
        assert!(signature_verifies(
            &serde_json::from_value(jwk.clone()).unwrap(),
            &alg,
            message,
            &sig
        ));
        for (field, value) in [("use", "enc"), ("alg", "RS512"), ("alg", "PS256")] {
            jwk[field] = json!(value);
            let key: CoreJsonWebKey = serde_json::from_value(jwk.clone()).unwrap();
            assert!(
                !signature_verifies(&key, &alg, message, &sig),
                "{field}={value}"
            );
            jwk.as_object_mut().unwrap().remove(field);
        }
        jwk["use"] = json!("sig");
        jwk["alg"] = json!("RS256");
        let key: CoreJsonWebKey = serde_json::from_value(jwk).unwrap();
        assert!(signature_verifies(&key, &alg, message, &sig));
    }

    /// A key source that counts fetches and hands out `after_refetch` once asked anew.
    struct Counting {
        first: Vec<CoreJsonWebKey>,
        after_refetch: Vec<CoreJsonWebKey>,
        fetches: AtomicUsize,
        refetches: AtomicUsize,
        fail: Mutex<bool>,
    }

    impl Counting {
        fn new(first: Vec<CoreJsonWebKey>, after_refetch: Vec<CoreJsonWebKey>) -> Self {
            Counting {
                first,
                after_refetch,
                fetches: AtomicUsize::new(0),
                refetches: AtomicUsize::new(0),
                fail: Mutex::new(false),
            }
        }
    }

    #[async_trait]
    impl KeySource for Counting {
        async fn keys(&self, refetch: bool) -> Result<Vec<CoreJsonWebKey>, FetchError> {
            if *self.fail.lock().unwrap() {
                return Err(FetchError::Unreachable {
                    url: "https://idp.test/jwks".into(),
                    reason: "connection refused".into(),
                });
            }
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if refetch {
                self.refetches.fetch_add(1, Ordering::SeqCst);
                return Ok(self.after_refetch.clone());
            }
            Ok(self.first.clone())
        }
    }

    fn claims() -> Value {
        json!({"iss": "https://idp.example", "sub": "alice"})
    }

    #[tokio::test]
    async fn a_token_signed_by_the_providers_key_verifies() {
        let key = RsaTestKey::new("k1");
        let source = Counting::new(vec![key.public()], vec![]);
        let got = verify(&key.sign(&claims()), &source).await.unwrap();
        assert_eq!(got["sub"], "alice");
        assert_eq!(source.refetches.load(Ordering::SeqCst), 0);
        let (jwk, token) = es256("e1", &claims());
        let source = Counting::new(vec![jwk], vec![]);
        assert_eq!(verify(&token, &source).await.unwrap()["sub"], "alice");
    }

    #[tokio::test]
    async fn an_unsigned_token_is_refused() {
        let key = RsaTestKey::new("k1");
        let source = Counting::new(vec![key.public()], vec![]);
        let header = b64(br#"{"alg":"none"}"#);
        let body = b64(claims().to_string().as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}.AAAA")] {
            assert_eq!(
                verify(&token, &source).await,
                Err(JwtError::Algorithm("none".into()))
            );
        }
        assert_eq!(
            source.fetches.load(Ordering::SeqCst),
            0,
            "refused before keys"
        );
    }

    #[tokio::test]
    async fn hs256_signed_with_the_public_key_as_secret_is_refused() {
        let key = RsaTestKey::new("k1");
        let source = Counting::new(vec![key.public()], vec![]);
        let secret = key.public_json().to_string();
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","kid":"k1"}"#),
            b64(claims().to_string().as_bytes())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
        assert_eq!(
            verify(&token, &source).await,
            Err(JwtError::Algorithm("HS256".into()))
        );
        // Also the modulus bytes as the secret, the other way this attack is tried.
        let n = key.key.rsa().unwrap().n().to_vec();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&n).unwrap();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
        assert!(matches!(
            verify(&token, &source).await,
            Err(JwtError::Algorithm(_))
        ));
    }

    #[tokio::test]
    async fn a_bad_signature_is_refused() {
        let key = RsaTestKey::new("k1");
        let source = Counting::new(vec![key.public()], vec![]);
        let token = key.sign(&claims());
        // The claims changed after signing.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = b64(json!({"iss": "https://idp.example", "sub": "mallory"})
            .to_string()
            .as_bytes());
        assert_eq!(
            verify(&parts.join("."), &source).await,
            Err(JwtError::BadSignature)
        );
        // Signed by another key that claims the provider's kid.
        let forger = RsaTestKey::new("k1");
        assert_eq!(
            verify(&forger.sign(&claims()), &source).await,
            Err(JwtError::BadSignature)
        );
        // An RS256 header over an EC key: the key type does not fit.
        let (jwk, _) = es256("k1", &claims());
        let source = Counting::new(vec![jwk], vec![]);
        assert_eq!(
            verify(&key.sign(&claims()), &source).await,
            Err(JwtError::BadSignature)
        );
    }

    #[tokio::test]
    async fn an_unknown_kid_is_fetched_anew_once_then_refused() {
        let old = RsaTestKey::new("old");
        let new = RsaTestKey::new("new");
        // Rotated: the first copy lacks the new key, the fresh copy has it.
        let source = Counting::new(vec![old.public()], vec![old.public(), new.public()]);
        assert!(verify(&new.sign(&claims()), &source).await.is_ok());
        assert_eq!(source.refetches.load(Ordering::SeqCst), 1);
        // Nobody has this kid: one fresh copy asked for, then refused.
        let stranger = RsaTestKey::new("stranger");
        let source = Counting::new(vec![old.public()], vec![old.public()]);
        assert_eq!(
            verify(&stranger.sign(&claims()), &source).await,
            Err(JwtError::UnknownKey("stranger".into()))
        );
        assert_eq!(source.refetches.load(Ordering::SeqCst), 1);
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn malformed_tokens_and_unreachable_keys_are_refused() {
        let key = RsaTestKey::new("k1");
        let source = Counting::new(vec![key.public()], vec![]);
        for token in [
            "",
            "a.b",
            "a.b.c.d.e",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(matches!(
                verify(token, &source).await,
                Err(JwtError::Malformed(_))
            ));
        }
        let crit = key.sign_with_header(
            &json!({"alg": "RS256", "kid": "k1", "crit": ["x"]}),
            &claims(),
        );
        assert_eq!(verify(&crit, &source).await, Err(JwtError::Critical));
        *source.fail.lock().unwrap() = true;
        assert!(matches!(
            verify(&key.sign(&claims()), &source).await,
            Err(JwtError::Keys(_))
        ));
    }
}
