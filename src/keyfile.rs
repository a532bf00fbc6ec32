//! Identity key files: the 32-byte ed25519 seed in hex, with the public key
//! in a comment so an operator can check which roster entry a file is.

use std::io::Write;
use std::path::Path;

use shroud_crypto::IdentityKey;
use zeroize::Zeroizing;

use crate::policy::{hex, unhex};

/// Writes a fresh identity to `path` (mode 0600, never over an existing
/// file) and returns its public key in hex.
pub fn generate(path: &Path) -> Result<String, String> {
    let key = IdentityKey::generate(&mut rand_core::OsRng);
    let public = hex(&key.public().to_bytes());
    let seed = key.to_seed();
    let text = Zeroizing::new(format!(
        "# shroud identity key (ed25519 seed). Keep this file secret.\n# public key: {public}\n{}\n",
        hex(seed.as_ref())
    ));
    write_secret(path, text.as_bytes())?;
    Ok(public)
}

/// Writes secret bytes to a new file readable by its owner only (mode 0600
/// on Unix), fsynced; never over an existing file.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{}: already exists; refusing to overwrite a key",
                path.display()
            )
        } else {
            format!("{}: cannot create: {e}", path.display())
        }
    })?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// Writes a public key file (hex, with a comment): what an operator hands
/// to `serve` and parties hand to whoever writes the roster.
pub fn write_public(path: &Path, public_hex: &str) -> Result<(), String> {
    if path.exists() {
        return Err(format!(
            "{}: already exists; refusing to overwrite",
            path.display()
        ));
    }
    std::fs::write(
        path,
        format!("# shroud identity public key (ed25519)\n{public_hex}\n"),
    )
    .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// A public identity key from 64 hex characters, or from a file holding
/// them (the `.pub` file `keygen` writes).
pub fn load_public(value: &str) -> Result<shroud_crypto::IdentityPublicKey, String> {
    let line = if value.len() == 64 && unhex(value).is_some() {
        value.to_string()
    } else {
        let text = std::fs::read_to_string(value).map_err(|e| {
            format!("{value}: neither 64 hex characters nor a readable public key file: {e}")
        })?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| format!("{value}: holds no public key"))?
            .to_string()
    };
    let bytes: [u8; 32] = unhex(&line)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{value}: the public key is not 64 hex characters"))?;
    shroud_crypto::IdentityPublicKey::from_bytes(&bytes)
        .map_err(|_| format!("{value}: not a valid ed25519 public key"))
}

/// Who besides its owner may read or write a secret file: `None` when
/// nobody, else a sentence saying so and how to fix it. Unix permissions
/// only; elsewhere always `None`.
pub fn exposure(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} holds a secret key but its mode is {mode:03o}: other users can read it; \
                 `chmod 600` it",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Reads the seed from a key file.
pub fn load(path: &Path) -> Result<Zeroizing<[u8; 32]>, String> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the key file: {e}", path.display()))?,
    );
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| format!("{}: holds no key", path.display()))?;
    let bytes = Zeroizing::new(
        unhex(line).ok_or_else(|| format!("{}: the key line is not hex", path.display()))?,
    );
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "{}: the key is {} bytes, an ed25519 seed is 32",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(Zeroizing::new(seed))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the
/// new content, never a torn file: write a sibling, fsync it, rename it over
/// `path`, fsync the folder. Owner-only on Unix.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}
