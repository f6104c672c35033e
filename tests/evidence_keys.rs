//! Where the signing key comes from: a systemd credential wins over the generated
//! key; `msp-agent pubkey` prints the OpenSSH key and the allowed_signers line.
//! (One test in this binary: it changes the process environment.)

use std::os::unix::fs::PermissionsExt;

use msp_agent::prove::keys::{KeySource, SigningKey};

#[test]
fn credentials_directory_key_is_used_and_printed() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let key_path = creds.join("signing-key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(&key_path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o400)).unwrap();
    // SAFETY: this binary has a single test; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("CREDENTIALS_DIRECTORY", &creds) };
    let k = SigningKey::load_or_generate(None, &dir.path().join("state")).unwrap();
    assert_eq!(k.source(), &KeySource::Credential(key_path.clone()));
    assert!(
        !dir.path().join("state/evidence/signing.key").exists(),
        "must not generate when a credential exists"
    );
    let pub_file = std::fs::read_to_string(key_path.with_extension("pub")).unwrap();
    assert!(pub_file.starts_with(&k.public_key_openssh()), "{pub_file}");

    // pubkey --config: the credential is found the same way the agent finds it.
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        "[agent]\nhostname = \"db-7\"\nstate_dir = \"/nonexistent\"\n[evidence]\n",
    )
    .unwrap();
    msp_agent::prove::cli::pubkey(msp_agent::prove::cli::PubkeyArgs {
        config: Some(cfg),
        key: None,
        host: None,
    })
    .unwrap();
}
