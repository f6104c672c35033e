//! The signing key (where it comes from, who may read it) and the trusted public keys
//! a verifier checks against.
//!
//! Signatures are OpenSSH SSHSIG (namespace [`NAMESPACE`], SHA-512) over the bundle's
//! exact bytes, made with an Ed25519 key, so that `ssh-keygen -Y verify` checks them
//! without our binary. The key file is an OpenSSH private key (what
//! `ssh-keygen -t ed25519 -N ''` writes) or a PKCS#8 PEM Ed25519 key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use super::bundle::NAMESPACE;

/// Name of the key inside `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=signing-key:…`).
pub const CREDENTIAL_NAME: &str = "signing-key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "signing key {path} is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` (and check who owns it) before starting the agent"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot read signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "signing key {path} is not an unencrypted Ed25519 key ({why}); \
         create one with `ssh-keygen -t ed25519 -N '' -f {path}`"
    )]
    Format { path: PathBuf, why: String },
    #[error("cannot create signing key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Where the key in use was found; recorded in the chain when the key changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Credential(PathBuf),
    Generated(PathBuf),
}

impl KeySource {
    pub fn describe(&self) -> String {
        match self {
            KeySource::File(p) => format!("file:{}", p.display()),
            KeySource::Credential(p) => format!("credential:{}", p.display()),
            KeySource::Generated(p) => format!("generated:{}", p.display()),
        }
    }
}

/// The agent's Ed25519 signing key.
pub struct SigningKey {
    key: PrivateKey,
    public: PublicKey,
    key_id: String,
    source: KeySource,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("source", &self.source)
            .finish()
    }
}

/// The key file generated at first start, relative to the state directory.
pub fn generated_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("evidence").join("signing.key")
}

impl SigningKey {
    /// The configured key file; else `$CREDENTIALS_DIRECTORY/signing-key` if it exists;
    /// else `<state_dir>/evidence/signing.key`, generated (mode 0600) if missing.
    pub fn load_or_generate(
        key_file: Option<&Path>,
        state_dir: &Path,
    ) -> Result<SigningKey, KeyError> {
        if let Some(path) = key_file {
            return SigningKey::load(path, KeySource::File(path.to_owned()));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join(CREDENTIAL_NAME);
            if path.exists() {
                return SigningKey::load(&path, KeySource::Credential(path.clone()));
            }
        }
        let path = generated_key_path(state_dir);
        if path.exists() {
            return SigningKey::load(&path, KeySource::Generated(path.clone()));
        }
        SigningKey::generate(&path)
    }

    /// Load a key file, refusing one that group or others may read.
    pub fn load(path: &Path, source: KeySource) -> Result<SigningKey, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read_err)?;
        let key = parse_private_key(&text).map_err(|why| KeyError::Format {
            path: path.to_owned(),
            why,
        })?;
        Ok(SigningKey::from_private(key, source))
    }

    /// Generate a new key at `path` (mode 0600, written atomically and durably).
    pub fn generate(path: &Path) -> Result<SigningKey, KeyError> {
        let create_err = |source| KeyError::Create {
            path: path.to_owned(),
            source,
        };
        let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
            .map_err(|e| create_err(std::io::Error::other(e.to_string())))?;
        let pem = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| create_err(std::io::Error::other(e.to_string())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(create_err)?;
        let tmp = path.with_extension("key.tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(create_err)?;
        f.write_all(pem.as_bytes()).map_err(create_err)?;
        f.sync_all().map_err(create_err)?;
        drop(f);
        fs::rename(&tmp, path).map_err(create_err)?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(create_err)?;
        tracing::info!(path = %path.display(), "generated a new evidence signing key");
        Ok(SigningKey::from_private(
            key,
            KeySource::Generated(path.to_owned()),
        ))
    }

    pub fn from_private(key: PrivateKey, source: KeySource) -> SigningKey {
        let public = key.public_key().clone();
        let key_id = public.fingerprint(HashAlg::Sha256).to_string();
        SigningKey {
            key,
            public,
            key_id,
            source,
        }
    }

    /// A key from a 32-byte seed (tests and fuzzing).
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        let kp = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        SigningKey::from_private(
            PrivateKey::from(kp),
            KeySource::File(PathBuf::from("(seed)")),
        )
    }

    /// OpenSSH fingerprint, `SHA256:…`: the `key_id` of every bundle this key signs.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// `ssh-ed25519 AAAA…` (no comment).
    pub fn public_key_openssh(&self) -> String {
        public_openssh(&self.public)
    }

    /// The armored SSHSIG over `msg` (what `ssh-keygen -Y sign -n msp-agent-evidence` writes).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let sig = self
            .key
            .sign(NAMESPACE, HashAlg::Sha512, msg)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        let mut pem = sig
            .to_pem(LineEnding::LF)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        Ok(pem.into_bytes())
    }
}

/// Parse an OpenSSH or PKCS#8 PEM private key; Ed25519 and unencrypted only.
pub fn parse_private_key(text: &str) -> Result<PrivateKey, String> {
    let key = if text.contains("BEGIN OPENSSH PRIVATE KEY") {
        PrivateKey::from_openssh(text).map_err(|e| format!("not an OpenSSH private key: {e}"))?
    } else if text.contains("BEGIN PRIVATE KEY") {
        use base64::Engine;
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let b64: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("PKCS#8 PEM body is not base64: {e}"))?;
        let sk = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
            .map_err(|e| format!("not a PKCS#8 Ed25519 key: {e}"))?;
        PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&sk.to_bytes()))
    } else {
        return Err("no OpenSSH or PKCS#8 PEM header".into());
    };
    if key.is_encrypted() {
        return Err("the key is encrypted with a passphrase".into());
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(format!("algorithm is {}", key.algorithm()));
    }
    Ok(key)
}

/// `ssh-ed25519 AAAA…` without the comment.
pub fn public_openssh(key: &PublicKey) -> String {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh().unwrap_or_default().trim().to_owned()
}

/// The allowed_signers line for `ssh-keygen -Y verify`.
pub fn allowed_signers_line(principal: &str, key: &PublicKey) -> String {
    format!(
        "{principal} namespaces=\"{NAMESPACE}\" {}",
        public_openssh(key)
    )
}

/// One key the verifier trusts, with the hosts it may sign for.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: PublicKey,
    pub key_id: String,
    /// Principal patterns from an allowed_signers line (`*` and `?` globs,
    /// comma-separated); `None` for a plain `.pub` line, which may sign for any host.
    pub principals: Option<String>,
    /// An Ed25519 key decoded once: verifying a run of bundles then skips decoding the
    /// same point for every one of them.
    ed25519: Option<ed25519_dalek::VerifyingKey>,
}

impl TrustedKey {
    pub fn new(key: PublicKey, principals: Option<String>) -> TrustedKey {
        let key_id = key.fingerprint(HashAlg::Sha256).to_string();
        let ed25519 = key
            .key_data()
            .ed25519()
            .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k.0).ok());
        TrustedKey {
            key,
            key_id,
            principals,
            ed25519,
        }
    }

    /// The SSHSIG check `ssh-keygen -Y verify` makes: the signature over the signed-data
    /// blob (namespace, empty reserved field, hash algorithm, hash of the message).
    fn verify_sshsig(&self, msg: &[u8], sig: &SshSig) -> Result<(), ()> {
        match (&self.ed25519, sig.algorithm()) {
            (Some(vk), Algorithm::Ed25519) => {
                use ed25519_dalek::Verifier;
                let signed = SshSig::signed_data(NAMESPACE, sig.hash_alg(), msg).map_err(|_| ())?;
                let sig = ed25519_dalek::Signature::try_from(sig.signature()).map_err(|_| ())?;
                vk.verify(&signed, &sig).map_err(|_| ())
            }
            _ => self.key.verify(NAMESPACE, msg, sig).map_err(|_| ()),
        }
    }
}

/// The keys a verifier accepts: an allowed_signers file or OpenSSH `.pub` lines.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    pub keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    pub fn parse(text: &str) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let is_type =
                |t: &str| t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-");
            let Some(i) = tokens.iter().position(|t| is_type(t)) else {
                return Err(format!(
                    "line {}: no public key (expected `ssh-ed25519 AAAA…`)",
                    n + 1
                ));
            };
            let Some(b64) = tokens.get(i + 1) else {
                return Err(format!("line {}: key type without key data", n + 1));
            };
            let key = PublicKey::from_openssh(&format!("{} {}", tokens[i], b64))
                .map_err(|e| format!("line {}: not an OpenSSH public key: {e}", n + 1))?;
            let principals = if i == 0 {
                None
            } else {
                Some(tokens[0].to_owned())
            };
            keys.push(TrustedKey::new(key, principals));
        }
        if keys.is_empty() {
            return Err("no public key in the file".into());
        }
        Ok(TrustedKeys { keys })
    }

    pub fn read(path: &Path) -> anyhow::Result<TrustedKeys> {
        let text = fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read public keys {}: {e}", path.display()))?;
        TrustedKeys::parse(&text)
            .map_err(|e| anyhow::anyhow!("public keys {}: {e}", path.display()))
    }

    /// Check one bundle's signature: trusted key, allowed for `host`, equal to the
    /// bundle's `key_id`, right namespace, valid over `msg`.
    pub fn verify(
        &self,
        host: &str,
        key_id: &str,
        msg: &[u8],
        sig_pem: &[u8],
    ) -> Result<(), String> {
        let sig =
            SshSig::from_pem(sig_pem).map_err(|e| format!("signature is not an SSHSIG: {e}"))?;
        if sig.namespace() != NAMESPACE {
            return Err(format!(
                "signature namespace is {:?}, not {NAMESPACE:?}",
                sig.namespace()
            ));
        }
        let Some(trusted) = self
            .keys
            .iter()
            .find(|k| k.key.key_data() == sig.public_key())
        else {
            let signer = PublicKey::from(sig.public_key().clone());
            return Err(format!(
                "signed by {}, which is not among the trusted public keys",
                signer.fingerprint(HashAlg::Sha256)
            ));
        };
        let signer_id = &trusted.key_id;
        if let Some(p) = &trusted.principals
            && !principal_matches(p, host)
        {
            return Err(format!(
                "key {signer_id} is trusted for {p:?}, not for host {host:?}"
            ));
        }
        if signer_id != key_id {
            return Err(format!(
                "signed by {signer_id} but the bundle names key {key_id}"
            ));
        }
        trusted
            .verify_sshsig(msg, &sig)
            .map_err(|_| "signature does not match the bundle's bytes".to_string())
    }
}

/// allowed_signers principal matching: comma-separated patterns with `*` and `?`,
/// a leading `!` negates.
pub fn principal_matches(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for p in patterns.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), name.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_with_trusted_keys() {
        let k = SigningKey::from_seed([7; 32]);
        let sig = k.sign(b"hello").unwrap();
        assert!(
            std::str::from_utf8(&sig)
                .unwrap()
                .starts_with("-----BEGIN SSH SIGNATURE-----")
        );
        let trusted = TrustedKeys::parse(&allowed_signers_line("web-*", k.public_key())).unwrap();
        assert_eq!(trusted.verify("web-1", k.key_id(), b"hello", &sig), Ok(()));
        let cases: &[(&str, &str, &[u8], &str)] = &[
            ("db-1", k.key_id(), b"hello", "not for host"),
            ("web-1", "SHA256:other", b"hello", "bundle names key"),
            ("web-1", k.key_id(), b"hellO", "does not match"),
        ];
        for (host, id, msg, want) in cases {
            let err = trusted.verify(host, id, msg, &sig).unwrap_err();
            assert!(err.contains(want), "{host} {id}: {err}");
        }
        let other = SigningKey::from_seed([8; 32]);
        let err = trusted
            .verify(
                "web-1",
                other.key_id(),
                b"hello",
                &other.sign(b"hello").unwrap(),
            )
            .unwrap_err();
        assert!(err.contains("not among the trusted"), "{err}");
    }

    #[test]
    fn decoded_key_path_agrees_with_ssh_key() {
        // The verifier checks Ed25519 signatures with a key decoded once; for every
        // message, hash algorithm and tampering it must answer as ssh-key's own
        // PublicKey::verify does (the code path `ssh-keygen -Y verify` is modelled on).
        let k = SigningKey::from_seed([9; 32]);
        let trusted = TrustedKeys::parse(&allowed_signers_line("*", k.public_key())).unwrap();
        let t = &trusted.keys[0];
        assert!(t.ed25519.is_some());
        for (i, hash) in [HashAlg::Sha512, HashAlg::Sha256].into_iter().enumerate() {
            let msg = format!("bundle {i}").into_bytes();
            let sig = k.key.sign(NAMESPACE, hash, &msg).unwrap();
            let mut bytes = sig.signature_bytes().to_vec();
            bytes[10] ^= 1;
            let bad_sig = SshSig::new(
                sig.public_key().clone(),
                NAMESPACE,
                hash,
                ssh_key::Signature::new(Algorithm::Ed25519, bytes).unwrap(),
            )
            .unwrap();
            for (m, s) in [
                (&msg[..], &sig),
                (&b"other"[..], &sig),
                (&msg[..], &bad_sig),
            ] {
                assert_eq!(
                    t.verify_sshsig(m, s).is_ok(),
                    t.key.verify(NAMESPACE, m, s).is_ok(),
                    "{hash:?} {:?}",
                    String::from_utf8_lossy(m)
                );
            }
            assert!(t.verify_sshsig(&msg, &sig).is_ok());
            assert!(t.verify_sshsig(&msg, &bad_sig).is_err());
        }
    }

    #[test]
    fn trusted_keys_accept_pub_and_allowed_signers_lines() {
        let k = SigningKey::from_seed([1; 32]);
        let text = format!(
            "# comment\n{} some comment\nweb-1,web-2 namespaces=\"a b\" {}\n",
            k.public_key_openssh(),
            k.public_key_openssh()
        );
        let t = TrustedKeys::parse(&text).unwrap();
        assert_eq!(t.keys.len(), 2);
        assert_eq!(t.keys[0].principals, None);
        assert_eq!(t.keys[1].principals.as_deref(), Some("web-1,web-2"));
        assert!(TrustedKeys::parse("").is_err());
        assert!(TrustedKeys::parse("web-1 nothing").is_err());
    }

    #[test]
    fn principal_patterns() {
        for (p, name, want) in [
            ("web-1", "web-1", true),
            ("web-*", "web-12", true),
            ("web-?", "web-12", false),
            ("*,!db-*", "db-1", false),
            ("a,b", "b", true),
            ("*", "", true),
        ] {
            assert_eq!(principal_matches(p, name), want, "{p} {name}");
        }
    }

    #[test]
    fn key_file_permissions_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        let path = generated_key_path(dir.path());
        let k = SigningKey::load_or_generate(None, dir.path()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = SigningKey::load_or_generate(None, dir.path()).unwrap();
        assert_eq!(k.key_id(), again.key_id());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = SigningKey::load_or_generate(None, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("0640"),
            "{err}"
        );

        let bad = dir.path().join("bad");
        fs::write(&bad, "nope").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        let err = SigningKey::load(&bad, KeySource::File(bad.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssh-keygen -t ed25519"), "{err}");

        // PKCS#8 PEM gives the same key as the OpenSSH form of the same seed.
        use base64::Engine;
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let dalek = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let der = dalek.to_pkcs8_der().unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
        );
        let p8 = dir.path().join("p8");
        fs::write(&p8, pem.as_bytes()).unwrap();
        fs::set_permissions(&p8, fs::Permissions::from_mode(0o400)).unwrap();
        let loaded = SigningKey::load(&p8, KeySource::File(p8.clone())).unwrap();
        assert_eq!(loaded.key_id(), SigningKey::from_seed([3; 32]).key_id());
    }
}
