//! A test identity provider: RSA and EC keys generated when a test asks for them, the
//! JWKS publishing their public halves, tokens signed with them, and an OIDC issuer
//! serving its discovery document and JWKS over plain HTTP on loopback.
//!
//! Only for tests (this crate's, and others' through the `test-idp` feature): nothing
//! here is fixed text, so a verifier that passes against it verified real signatures.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A signing key and the JWK of its public half.
pub struct TestKey {
    /// The `kid` it is published under.
    pub kid: String,
    /// RS256 or ES256.
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    /// A fresh 2048-bit RSA key (RS256).
    pub fn rsa(kid: &str) -> TestKey {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA keygen");
        let der = key.to_pkcs1_der().expect("PKCS#1");
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())}),
        }
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> TestKey {
        use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("EC keygen");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("EC key");
        // Uncompressed point: 0x04, x (32 bytes), y (32 bytes).
        let point = pair.public_key().as_ref();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
        }
    }

    /// The JWK of its public half.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// `claims` signed with this key, its kid in the header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), self.alg, claims)
    }

    /// `claims` signed with this key but the header saying `kid` and `alg` (to forge).
    pub fn sign_as(&self, kid: Option<&str>, alg: Algorithm, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(String::from);
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("sign")
    }
}

/// The JWKS text publishing `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// A token with no signature (`alg: none`), as an attacker would send one.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// What the issuer answers.
struct Served {
    /// The discovery document's `issuer` (None: its own URL, as a correct IdP says).
    doc_issuer: Option<String>,
    jwks_status: u16,
    jwks_body: String,
}

/// An OIDC issuer on loopback at `<base>/realms/test` (Keycloak's layout).
pub struct TestIdp {
    /// The issuer URL tokens carry in `iss`.
    pub issuer: String,
    served: Arc<Mutex<Served>>,
    jwks_fetches: Arc<AtomicUsize>,
}

impl TestIdp {
    /// Serves a discovery document and the JWKS of `keys`.
    pub async fn start(keys: &[&TestKey]) -> TestIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!(
            "http://{}/realms/test",
            listener.local_addr().expect("addr")
        );
        let served = Arc::new(Mutex::new(Served {
            doc_issuer: None,
            jwks_status: 200,
            jwks_body: jwks(keys),
        }));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let (s, f, iss) = (served.clone(), jwks_fetches.clone(), issuer.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (s, f, iss) = (s.clone(), f.clone(), iss.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0; 8192];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (code, body) = answer(&s, &f, &iss, &path);
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        TestIdp {
            issuer,
            served,
            jwks_fetches,
        }
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `keys` from now on (a key rotation).
    pub fn publish(&self, keys: &[&TestKey]) {
        self.served().jwks_body = jwks(keys);
    }

    /// Answers the JWKS with `status` and `body` from now on.
    pub fn serve_jwks(&self, status: u16, body: &str) {
        let mut s = self.served();
        s.jwks_status = status;
        s.jwks_body = body.into();
    }

    /// Makes the discovery document name `issuer` (another issuer's document).
    pub fn claim_issuer(&self, issuer: &str) {
        self.served().doc_issuer = Some(issuer.into());
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims a Keycloak access token for `user` carries, valid for `secs` more seconds
    /// (negative: expired that long ago).
    pub fn claims(&self, user: &str, secs: i64) -> Value {
        let now = (crate::now_ms() / 1000) as i64;
        json!({
            "iss": self.issuer,
            "aud": ["berth", "account"],
            "sub": format!("f3a1c2d4-{user}"),
            "preferred_username": user,
            "groups": ["/gpu-users", "/org/ml"],
            "realm_access": {"roles": ["offline_access", "hpc-operator"]},
            "iat": now,
            "exp": now + secs,
        })
    }
}

fn answer(s: &Mutex<Served>, fetches: &AtomicUsize, issuer: &str, path: &str) -> (u16, String) {
    let s = s.lock().unwrap_or_else(|e| e.into_inner());
    let realm = issuer.split_once("//").map(|(_, r)| r).unwrap_or("");
    let realm_path = realm.split_once('/').map(|(_, p)| p).unwrap_or("");
    if path == format!("/{realm_path}/.well-known/openid-configuration") {
        let doc = json!({
            "issuer": s.doc_issuer.as_deref().unwrap_or(issuer),
            "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        });
        (200, doc.to_string())
    } else if path == format!("/{realm_path}/protocol/openid-connect/certs") {
        fetches.fetch_add(1, Ordering::SeqCst);
        (s.jwks_status, s.jwks_body.clone())
    } else {
        (404, "{\"error\": \"not found\"}".into())
    }
}
